import { render } from "preact";
import { useEffect, useState } from "preact/hooks";
import { ApiError, call, session, whenUnauthorized } from "./api";
import { ApplyDialog } from "./pages/apply";
import { DataPlanes } from "./pages/dataplanes";
import { PipelineDetail, Pipelines } from "./pages/pipelines";
import { TransferDetail } from "./pages/transfer";
import { Transfers } from "./pages/transfers";
import { Link, useLocation } from "./router";
import "./style.css";

function App() {
  const [token, setToken] = useState(session.token());
  const [notice, setNotice] = useState<string | undefined>();
  useEffect(
    () =>
      whenUnauthorized(() => {
        session.signOut();
        setNotice("The server did not accept the token; sign in again.");
        setToken(null);
      }),
    [],
  );
  if (!token) {
    return (
      <SignIn
        notice={notice}
        onSignedIn={(t) => {
          session.signIn(t);
          setNotice(undefined);
          setToken(t);
        }}
      />
    );
  }
  return (
    <Shell
      onSignOut={() => {
        session.signOut();
        setToken(null);
      }}
    />
  );
}

function SignIn({ notice, onSignedIn }: { notice?: string; onSignedIn: (token: string) => void }) {
  const [value, setValue] = useState("");
  const [error, setError] = useState<string | undefined>(notice);
  const [busy, setBusy] = useState(false);
  return (
    <main class="signin">
      <h1>
        <Logo /> ferry
      </h1>
      <form
        onSubmit={async (e) => {
          e.preventDefault();
          setBusy(true);
          setError(undefined);
          try {
            // Any protected call tells whether the server takes the token.
            await call("GET", "/v1/dataplanes", undefined, value.trim());
            onSignedIn(value.trim());
          } catch (err) {
            setError(
              err instanceof ApiError && err.status === 401
                ? "The server does not accept this token."
                : (err as Error).message,
            );
          } finally {
            setBusy(false);
          }
        }}
      >
        <label for="token">API token</label>
        <input
          id="token"
          type="password"
          autoComplete="current-password"
          required
          value={value}
          onInput={(e) => setValue(e.currentTarget.value)}
          aria-describedby="token-help"
          aria-invalid={error ? true : undefined}
        />
        <p id="token-help" class="muted small">
          A token from the server's settings (<code>tokens</code>, <code>FERRY_API_TOKEN</code>), or the one{" "}
          <code>ferry serve</code> made in its data directory (<code>api-token</code>). It is kept in this tab only.
        </p>
        {error && (
          <p class="error" role="alert">
            {error}
          </p>
        )}
        <button type="submit" class="primary" disabled={busy || value.trim() === ""}>
          Sign in
        </button>
      </form>
    </main>
  );
}

function Logo() {
  return (
    <svg class="logo" viewBox="0 0 16 16" width="20" height="20" aria-hidden="true">
      <path d="M1 10h14l-2 4H3z" fill="currentColor" />
      <path d="M7 2v7M7 2l5 6H7" stroke="currentColor" stroke-width="1.2" fill="none" />
    </svg>
  );
}

function Shell({ onSignOut }: { onSignOut: () => void }) {
  const { path } = useLocation();
  const [applying, setApplying] = useState(false);
  const section = path.split("/")[1] || "transfers";
  const nav = (to: string, label: string) => (
    <li>
      <Link to={to} aria-current={section === to.slice(1) ? "page" : undefined}>
        {label}
      </Link>
    </li>
  );
  useEffect(() => {
    document.title = `${section[0].toUpperCase()}${section.slice(1)} · ferry`;
  }, [section]);
  return (
    <>
      <a class="skip" href="#main">
        Skip to content
      </a>
      <header class="top">
        <Link to="/transfers" class="brand">
          <Logo /> ferry
        </Link>
        <nav aria-label="Main">
          <ul>
            {nav("/transfers", "Transfers")}
            {nav("/pipelines", "Pipelines")}
            {nav("/dataplanes", "Data planes")}
          </ul>
        </nav>
        <div class="top-actions">
          <button type="button" class="primary" onClick={() => setApplying(true)}>
            Apply manifest
          </button>
          <button type="button" onClick={onSignOut}>
            Sign out
          </button>
        </div>
      </header>
      <main id="main" tabIndex={-1}>
        <Page path={path} />
      </main>
      <ApplyDialog open={applying} onClose={() => setApplying(false)} />
    </>
  );
}

function Page({ path }: { path: string }) {
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  switch (parts[0] ?? "transfers") {
    case "transfers":
      return parts[1] ? <TransferDetail key={parts[1]} name={parts[1]} /> : <Transfers />;
    case "pipelines":
      return parts[1] ? <PipelineDetail key={parts[1]} name={parts[1]} /> : <Pipelines />;
    case "dataplanes":
      return <DataPlanes />;
    default:
      return (
        <section>
          <h1>Not found</h1>
          <p>
            The console has no page <code>{path}</code>. <Link to="/transfers">See the transfers.</Link>
          </p>
        </section>
      );
  }
}

render(<App />, document.getElementById("app")!);
