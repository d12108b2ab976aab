import { useEffect, useRef, useState } from "preact/hooks";
import type {
  Recommendation,
  SessionInfo,
  SubmitRequest,
  Submitted,
  TemplateInfo,
  TierInfo,
  UploadInfo,
} from "../../api-contract.js";
import { describeError, getJson, postFile, postJson, query } from "../api.js";
import { ConfirmDialog, ErrorNote } from "../components/common.js";
import { formatBytes, formatDuration, formatMemory, formatTime, formatUsd } from "../format.js";
import { jobHref, useTitle } from "../hooks.js";

type Priority = NonNullable<SubmitRequest["priority"]>;

/** The code a new job runs: a template, or code the researcher uploaded. */
type Code = { readonly template: string } | { readonly upload: UploadInfo };

/** What an upload's file name says it is, as the API's content type. */
const UPLOAD_TYPES: Readonly<Record<string, string>> = { zip: "application/zip", py: "text/x-python" };

/**
 * Submits a template or uploaded code: its detected recommendation, the tiers side by side, an estimate
 * for a chosen runtime (confirmed when above the session's warning level), then the new job's page.
 * `#/new?resumeFrom=<job>&resumeStep=<n>` starts it from another job's checkpoint.
 */
export function NewJobPage({ session, params }: { session: SessionInfo; params: URLSearchParams }) {
  useTitle("New job");
  const [templates, setTemplates] = useState<TemplateInfo[]>();
  const [tiers, setTiers] = useState<TierInfo[]>();
  const [loadError, setLoadError] = useState<string>();
  const [code, setCode] = useState<Code>();
  const [uploading, setUploading] = useState(false);
  const [uploadError, setUploadError] = useState<string>();
  const fileInput = useRef<HTMLInputElement>(null);
  const [tier, setTier] = useState<string>("");
  const [priority, setPriority] = useState<Priority>("normal");
  const [hours, setHours] = useState("1");
  const [envText, setEnvText] = useState("");
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string>();
  const [confirming, setConfirming] = useState(false);
  const resumeFrom = params.get("resumeFrom") ?? undefined;
  const resumeStepText = params.get("resumeStep");
  const resumeStep = resumeStepText ? Number(resumeStepText) : undefined;

  useEffect(() => {
    Promise.all([getJson<TemplateInfo[]>("/api/templates"), getJson<TierInfo[]>("/api/tiers")]).then(
      ([t, r]) => {
        setTemplates(t);
        setTiers(r);
      },
      (e: unknown) => setLoadError(describeError(e)),
    );
  }, []);

  const template = code && "template" in code ? code.template : "";
  const uploaded = code && "upload" in code ? code.upload : undefined;
  const recommendation: (Recommendation & { warnings?: readonly string[] }) | undefined =
    uploaded?.recommendation ?? templates?.find((t) => t.name === template)?.recommendation;
  const chosenTier = tiers?.find((t) => t.name === tier);
  const hoursValue = Number(hours);
  const hoursValid = hours.trim() !== "" && Number.isFinite(hoursValue) && hoursValue > 0;
  const estimate = chosenTier && hoursValid ? hoursValue * chosenTier.onDemandHourlyUsd : undefined;
  const overWarning = estimate !== undefined && estimate > session.costWarningUsd;
  const overRuntime =
    chosenTier !== undefined && hoursValid && hoursValue * 3600 > chosenTier.maxRuntimeSeconds;
  const env = parseEnv(envText);

  const recommend = (recommended: string | undefined): void => {
    if (recommended && tiers?.some((t) => t.name === recommended)) setTier(recommended);
  };

  const pickTemplate = (name: string): void => {
    setCode({ template: name });
    setUploadError(undefined);
    // The upload is let go (the console removes it within the hour); picking the file again uploads it anew.
    if (fileInput.current) fileInput.current.value = "";
    recommend(templates?.find((t) => t.name === name)?.recommendation.tier);
  };

  const pickFile = async (file: File | undefined): Promise<void> => {
    setUploadError(undefined);
    if (!file) return;
    const type = UPLOAD_TYPES[/\.([^.]+)$/.exec(file.name)?.[1]?.toLowerCase() ?? ""];
    if (!type) return setUploadError(`${file.name} is neither a .zip nor a .py file.`);
    if (file.size > session.maxUploadBytes)
      return setUploadError(
        `${file.name} is ${formatBytes(file.size)}, more than the ${formatBytes(session.maxUploadBytes)} a job's code may be; pass data as a dataset instead.`,
      );
    setUploading(true);
    try {
      const info = await postFile<UploadInfo>(`/api/uploads${query({ name: file.name })}`, file, type);
      setCode({ upload: info });
      recommend(info.recommendation.tier);
    } catch (e) {
      setUploadError(describeError(e));
      if (code && "upload" in code) setCode(undefined);
    } finally {
      setUploading(false);
    }
  };

  const submit = async (): Promise<void> => {
    setConfirming(false);
    setBusy(true);
    setError(undefined);
    try {
      const request: SubmitRequest = {
        ...(uploaded ? { upload: uploaded.upload } : { template }),
        tier,
        priority,
        ...(Object.keys(env.values).length > 0 ? { env: env.values } : {}),
        ...(resumeFrom ? { resumeFrom, ...(resumeStep !== undefined ? { resumeStep } : {}) } : {}),
      };
      const { jobId } = await postJson<Submitted>("/api/jobs", request);
      location.hash = jobHref(jobId);
    } catch (e) {
      setError(describeError(e));
      setBusy(false);
    }
  };

  const onSubmit = (event: Event): void => {
    event.preventDefault();
    if (!code) return setError("Pick a template or upload your code.");
    if (uploading) return setError("Wait for the upload to finish.");
    if (!tier) return setError("Pick a tier.");
    if (env.errors.length > 0) return setError(`Fix the environment variables: ${env.errors.join("; ")}`);
    if (overWarning) return setConfirming(true);
    void submit();
  };

  return (
    <section aria-labelledby="new-heading" class="new-job">
      <h1 id="new-heading" tabIndex={-1}>
        New job
      </h1>
      {resumeFrom && (
        <p class="note">
          Starts from the checkpoint of job <a href={jobHref(resumeFrom)}>{resumeFrom}</a>
          {resumeStep !== undefined ? ` at step ${resumeStep}` : " (its latest)"}.
        </p>
      )}
      {loadError && <ErrorNote>Could not load the templates and tiers: {loadError}</ErrorNote>}
      {!loadError && (templates === undefined || tiers === undefined) && <p class="muted">Loading…</p>}
      {templates && tiers && (
        <form onSubmit={onSubmit} noValidate>
          <fieldset class="templates">
            <legend>Template</legend>
            <div class="template-grid">
              {templates.map((t) => (
                <label key={t.name} class={`template-card${t.name === template ? " selected" : ""}`}>
                  <span class="template-head">
                    <input
                      type="radio"
                      name="template"
                      value={t.name}
                      checked={t.name === template}
                      onChange={() => pickTemplate(t.name)}
                    />
                    <strong>{t.name}</strong>
                  </span>
                  <span class="template-summary">{t.summary}</span>
                  <span class="muted">
                    Recommended: {t.recommendation.tier} · {t.recommendation.family}
                  </span>
                </label>
              ))}
            </div>
          </fieldset>
          <fieldset class="upload">
            <legend>Or your own code</legend>
            <div class={`template-card upload-card${uploaded ? " selected" : ""}`}>
              <label class="field">
                <span>A .zip of your code with main.py at its root, or a single .py file</span>
                <input
                  ref={fileInput}
                  type="file"
                  accept=".zip,.py"
                  disabled={uploading}
                  onChange={(e) => void pickFile(e.currentTarget.files?.[0])}
                />
              </label>
              <p class="muted" role="status" data-testid="upload-status">
                {uploading
                  ? "Uploading and reading it…"
                  : uploaded
                    ? `${uploaded.name} (${formatBytes(uploaded.size)}) is ready: kept until ${formatTime(uploaded.expiresAt)}.`
                    : ""}
              </p>
              {uploadError && <ErrorNote>{uploadError}</ErrorNote>}
            </div>
          </fieldset>
          {recommendation && (
            <section class="recommendation" aria-labelledby="why-heading">
              <h2 id="why-heading">
                Why {recommendation.tier} with the {recommendation.family} image
              </h2>
              <ul>
                {recommendation.reasons.map((reason, i) => (
                  <li key={i}>{reason}</li>
                ))}
              </ul>
              {recommendation.warnings?.map((warning, i) => (
                <p key={i} class="warning">
                  {warning}
                </p>
              ))}
            </section>
          )}
          <fieldset class="tiers">
            <legend>Tier</legend>
            <div class="table-wrap">
              <table class="tiers-table">
                <caption class="visually-hidden">The tiers compared</caption>
                <thead>
                  <tr>
                    <th scope="col">Tier</th>
                    <th scope="col">GPU</th>
                    <th scope="col" class="num">
                      vCPU
                    </th>
                    <th scope="col" class="num">
                      Memory
                    </th>
                    <th scope="col" class="num">
                      Max runtime
                    </th>
                    <th scope="col" class="num">
                      On demand
                    </th>
                  </tr>
                </thead>
                <tbody>
                  {tiers.map((t) => (
                    <tr key={t.name} class={t.name === tier ? "selected" : undefined}>
                      <th scope="row">
                        <label>
                          <input
                            type="radio"
                            name="tier"
                            value={t.name}
                            checked={t.name === tier}
                            onChange={() => setTier(t.name)}
                          />{" "}
                          {t.name}
                          {recommendation?.tier === t.name && <span class="tag">recommended</span>}
                        </label>
                      </th>
                      <td>{t.gpu ? "yes" : "–"}</td>
                      <td class="num">{t.vcpus}</td>
                      <td class="num">{formatMemory(t.memoryMiB)}</td>
                      <td class="num">{formatDuration(t.maxRuntimeSeconds)}</td>
                      <td class="num">{formatUsd(t.onDemandHourlyUsd)}/h</td>
                    </tr>
                  ))}
                </tbody>
              </table>
            </div>
          </fieldset>
          <div class="form-grid">
            <label class="field">
              <span>Priority</span>
              <select value={priority} onChange={(e) => setPriority(e.currentTarget.value as Priority)}>
                <option value="high">high</option>
                <option value="normal">normal</option>
                <option value="low">low</option>
              </select>
            </label>
            <label class="field">
              <span>Expected runtime (hours, for the estimate)</span>
              <input
                type="number"
                min="0"
                step="0.25"
                inputMode="decimal"
                value={hours}
                aria-invalid={!hoursValid}
                onInput={(e) => setHours(e.currentTarget.value)}
              />
            </label>
            <label class="field wide">
              <span>Environment variables (NAME=value, one a line)</span>
              <textarea
                rows={3}
                value={envText}
                spellcheck={false}
                aria-invalid={env.errors.length > 0}
                onInput={(e) => setEnvText(e.currentTarget.value)}
              />
            </label>
          </div>
          <div class="estimate" aria-live="polite">
            {estimate === undefined ? (
              <p class="muted">Pick a tier and a runtime for an estimate.</p>
            ) : (
              <p>
                Estimated cost: <strong data-testid="estimate">{formatUsd(estimate)}</strong> ({hoursValue} h
                × {formatUsd(chosenTier?.onDemandHourlyUsd)}/h on demand)
              </p>
            )}
            {overWarning && (
              <p class="warning">
                Above {formatUsd(session.costWarningUsd)}: you will be asked to confirm before it is
                submitted.
              </p>
            )}
            {overRuntime && (
              <p class="warning">
                {tier} stops a job after {formatDuration(chosenTier.maxRuntimeSeconds)}; checkpoint it, or
                pick a larger tier.
              </p>
            )}
          </div>
          {error && <ErrorNote>{error}</ErrorNote>}
          <div class="actions">
            <button type="submit" class="primary" disabled={busy}>
              {busy ? "Submitting…" : "Submit job"}
            </button>
            <a class="button-link secondary" href="#/jobs">
              Back to jobs
            </a>
          </div>
        </form>
      )}
      <ConfirmDialog
        open={confirming}
        title="Submit an expensive job?"
        confirmLabel="Submit anyway"
        onConfirm={() => void submit()}
        onClose={() => setConfirming(false)}
      >
        <p>
          The estimate, {formatUsd(estimate)}, is above {formatUsd(session.costWarningUsd)}.
        </p>
      </ConfirmDialog>
    </section>
  );
}

/** `NAME=value` lines (blank lines and `#` comments skipped) to variables, and what is wrong with the rest. */
export function parseEnv(text: string): { values: Record<string, string>; errors: string[] } {
  const values: Record<string, string> = {};
  const errors: string[] = [];
  text.split("\n").forEach((raw, i) => {
    const line = raw.trim();
    if (!line || line.startsWith("#")) return;
    const match = /^([A-Za-z_][A-Za-z0-9_]*)=(.*)$/.exec(line);
    if (!match) errors.push(`line ${i + 1} is not NAME=value`);
    else values[match[1]!] = match[2]!;
  });
  return { values, errors };
}
