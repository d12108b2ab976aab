import { render } from "preact";
import { useEffect, useRef, useState } from "preact/hooks";
import type { SessionInfo } from "../api-contract.js";
import { ApiError, describeError, loadSession, onSignedOut } from "./api.js";
import { ErrorNote } from "./components/common.js";
import type { Route } from "./hooks.js";
import { useRoute, useTitle } from "./hooks.js";
import { JobPage } from "./pages/job.js";
import { JobsPage } from "./pages/jobs.js";
import { NewJobPage } from "./pages/new-job.js";
import { UsagePage } from "./pages/usage.js";

type SessionState =
  | { readonly kind: "loading" }
  | { readonly kind: "ready"; readonly session: SessionInfo }
  | { readonly kind: "signed-out" }
  | { readonly kind: "failed"; readonly message: string };

/** The console: the session first, then the page the hash names. */
function App() {
  const [state, setState] = useState<SessionState>({ kind: "loading" });
  const [attempt, setAttempt] = useState(0);
  const route = useRoute();

  useEffect(() => {
    loadSession().then(
      (session) => setState({ kind: "ready", session }),
      (error: unknown) =>
        setState(
          error instanceof ApiError && error.unauthenticated
            ? { kind: "signed-out" }
            : { kind: "failed", message: describeError(error) },
        ),
    );
  }, [attempt]);
  useEffect(() => onSignedOut(() => setState({ kind: "signed-out" })), []);

  return (
    <>
      <a class="skip-link" href="#main" onClick={skipToMain}>
        Skip to content
      </a>
      <header class="app-header">
        <div class="brand">
          <span class="logo" aria-hidden="true" />
          Crucible
        </div>
        <nav aria-label="Console">
          <NavLink href="#/jobs" current={route.page === "jobs" || route.page === "job"}>
            Jobs
          </NavLink>
          <NavLink href="#/new" current={route.page === "new"}>
            New job
          </NavLink>
          <NavLink href="#/usage" current={route.page === "usage"}>
            Usage
          </NavLink>
        </nav>
        {state.kind === "ready" && (
          <p class="who" title={`platform: ${state.session.platform}`}>
            {state.session.user} <span class="muted">in</span> {state.session.project}{" "}
            <span class="platform-tag">{state.session.platform}</span>
          </p>
        )}
      </header>
      <main id="main" tabIndex={-1}>
        {state.kind === "loading" && <p class="muted">Connecting to the console…</p>}
        {state.kind === "signed-out" && <SignedOut />}
        {state.kind === "failed" && (
          <section aria-labelledby="failed-heading">
            <h1 id="failed-heading">The console is not answering</h1>
            <ErrorNote>{state.message}</ErrorNote>
            <button type="button" class="primary" onClick={() => setAttempt((a) => a + 1)}>
              Try again
            </button>
          </section>
        )}
        {state.kind === "ready" && <Page route={route} session={state.session} />}
      </main>
    </>
  );
}

function Page({ route, session }: { route: Route; session: SessionInfo }) {
  // Moving to another page moves focus to its heading, so a screen reader announces where it is.
  const first = useRef(true);
  const key = route.page === "job" ? `job:${route.jobId}` : route.page;
  useEffect(() => {
    if (first.current) {
      first.current = false;
      return;
    }
    document.querySelector<HTMLElement>("main h1")?.focus();
  }, [key]);

  switch (route.page) {
    case "jobs":
      return <JobsPage />;
    case "job":
      return <JobPage key={route.jobId} jobId={route.jobId} />;
    case "new":
      return <NewJobPage session={session} params={route.params} />;
    case "usage":
      return <UsagePage />;
    case "missing":
      return <Missing />;
  }
}

function NavLink({ href, current, children }: { href: string; current: boolean; children: string }) {
  return (
    <a href={href} aria-current={current ? "page" : undefined}>
      {children}
    </a>
  );
}

function SignedOut() {
  useTitle("Sign in");
  return (
    <section aria-labelledby="signed-out-heading" class="signed-out">
      <h1 id="signed-out-heading">Open the login URL</h1>
      <p>
        This browser has no console session. Open the login URL that <code>crucible console</code> printed in
        your terminal (it signs this browser in once), then come back here.
      </p>
    </section>
  );
}

function Missing() {
  useTitle("Not found");
  return (
    <section aria-labelledby="missing-heading">
      <h1 id="missing-heading" tabIndex={-1}>
        No such page
      </h1>
      <p>
        <a href="#/jobs">Go to your jobs</a>.
      </p>
    </section>
  );
}

/** The skip link moves focus without changing the hash (which routes). */
function skipToMain(event: MouseEvent): void {
  event.preventDefault();
  document.getElementById("main")?.focus();
}

render(<App />, document.getElementById("app")!);
