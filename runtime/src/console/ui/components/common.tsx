import type { ComponentChildren } from "preact";
import { useEffect, useId, useRef } from "preact/hooks";
import type { JobProgress, JobStatus } from "../../api-contract.js";
import { formatDuration } from "../format.js";

export const FINAL_STATUSES: readonly JobStatus[] = ["succeeded", "failed", "cancelled"];

export function isFinal(status: JobStatus): boolean {
  return FINAL_STATUSES.includes(status);
}

export function StatusBadge({ status }: { status: JobStatus }) {
  return <span class={`badge status-${status}`}>{status}</span>;
}

/** A bar for the job's fraction done (when the total is known), with its step and ETA as text. */
export function ProgressBar({ progress, status }: { progress?: JobProgress; status: JobStatus }) {
  if (!progress || progress.step === undefined)
    return <span class="muted">{status === "queued" ? "waiting" : "–"}</span>;
  const percent = progress.fraction === undefined ? undefined : Math.round(progress.fraction * 1000) / 10;
  const steps =
    progress.total === undefined ? `step ${progress.step}` : `${progress.step} / ${progress.total}`;
  const eta =
    progress.etaSeconds !== undefined && status === "running"
      ? ` · ETA ${formatDuration(progress.etaSeconds)}`
      : "";
  return (
    <div class="progress-cell">
      {percent !== undefined && (
        <div
          class="progress"
          role="progressbar"
          aria-valuemin={0}
          aria-valuemax={100}
          aria-valuenow={percent}
          aria-label={`${percent}% done`}
        >
          <div class="progress-bar" style={{ width: `${Math.min(100, Math.max(0, percent))}%` }} />
        </div>
      )}
      <span class="progress-text">
        {percent !== undefined ? `${percent}% · ` : ""}
        {steps}
        {eta}
      </span>
    </div>
  );
}

/** An alert for a failed request or action. */
export function ErrorNote({ children }: { children: ComponentChildren }) {
  return (
    <p class="error-note" role="alert">
      {children}
    </p>
  );
}

export interface ConfirmDialogProps {
  readonly open: boolean;
  readonly title: string;
  readonly confirmLabel: string;
  readonly danger?: boolean;
  readonly busy?: boolean;
  readonly error?: string;
  readonly onConfirm: () => void;
  readonly onClose: () => void;
  readonly children?: ComponentChildren;
}

/**
 * A modal confirmation in the browser's own <dialog>: focus moves into it and stays there, Escape
 * cancels, and focus returns to what opened it.
 */
export function ConfirmDialog(props: ConfirmDialogProps) {
  const { open, title, confirmLabel, danger, busy, error, onConfirm, onClose, children } = props;
  const dialog = useRef<HTMLDialogElement>(null);
  const id = useId();
  useEffect(() => {
    const element = dialog.current!;
    if (open && !element.open) element.showModal();
    if (!open && element.open) element.close();
  }, [open]);
  return (
    <dialog ref={dialog} class="dialog" aria-labelledby={`${id}-title`} onClose={onClose}>
      <form
        method="dialog"
        onSubmit={(event) => {
          event.preventDefault();
          onConfirm();
        }}
      >
        <h2 id={`${id}-title`}>{title}</h2>
        {children}
        {error && <ErrorNote>{error}</ErrorNote>}
        <div class="actions">
          <button type="button" class="secondary" onClick={onClose} disabled={busy}>
            Back
          </button>
          <button type="submit" class={danger ? "danger" : "primary"} disabled={busy}>
            {busy ? "Working…" : confirmLabel}
          </button>
        </div>
      </form>
    </dialog>
  );
}
