#!/usr/bin/env node
import Module from "node:module";

/**
 * Modules the libraries load as they load, for features `crucible` never uses: dockerode's BuildKit
 * sessions (`withSession`, with the gRPC stack: @grpc/grpc-js, @grpc/proto-loader, protobufjs),
 * docker-modem's ssh:// transport (`ssh`, with ssh2) and zod's error messages in every language but
 * English (`locales`; English is loaded on its own). They are 2.2 of the 3.6 MB of JavaScript that
 * `crucible run` would compile, and compiling is most of its start-up. Each is loaded on first use
 * instead (a call of the function, or a property of the namespace), so nothing changes for code that
 * uses them; a release that moves them only makes start-up slower again, and
 * test/runtime/cli/packaging.test.ts fails.
 */
const DEFERRED: readonly { readonly request: string; readonly from: RegExp; readonly kind: Kind }[] = [
  { request: "./session", from: /[\\/]dockerode[\\/]lib[\\/]docker\.js$/, kind: "function" },
  { request: "./ssh", from: /[\\/]docker-modem[\\/]lib[\\/]modem\.js$/, kind: "function" },
  {
    request: "../locales/index.cjs",
    from: /[\\/]zod[\\/]v4[\\/](?:classic[\\/]external|core[\\/]index)\.cjs$/,
    kind: "namespace",
  },
];

type Kind = "function" | "namespace";
type Load = (request: string, parent: NodeJS.Module | undefined, isMain: boolean) => unknown;

/** Stands in for a module until it is used: a function that loads it when called, or a namespace. */
function standIn(kind: Kind, load: () => unknown): unknown {
  if (kind === "function") {
    return function (this: unknown, ...args: unknown[]): unknown {
      return (load() as (...a: unknown[]) => unknown).apply(this, args);
    };
  }
  const real = () => load() as object;
  // An ES module's namespace as TypeScript compiles it, so that __importStar takes it as it is.
  return new Proxy(Object.create(null) as object, {
    get: (_, key): unknown => (key === "__esModule" ? true : Reflect.get(real(), key)),
    has: (_, key) => Reflect.has(real(), key),
    ownKeys: () => Reflect.ownKeys(real()),
    getOwnPropertyDescriptor: (_, key) => {
      const descriptor = Reflect.getOwnPropertyDescriptor(real(), key);
      return descriptor && { ...descriptor, configurable: true };
    },
  });
}

function deferUnusedModules(): void {
  const loader = Module as unknown as { _load: Load };
  const load = loader._load;
  loader._load = function (request, parent, isMain) {
    const from = parent?.filename;
    const deferred = from && DEFERRED.find((d) => d.request === request && d.from.test(from));
    if (!deferred) return load.call(this, request, parent, isMain);
    let module: unknown;
    return standIn(deferred.kind, () => (module ??= load.call(loader, request, parent, isMain)));
  };
}

// Installed, the command runs the built JavaScript (runtime/dist): no compiler at start-up. The CLI is
// loaded once the hook is in place, and then only the module of the command it is given (../index.ts).
deferUnusedModules();
// `crucible ls | head`: a reader that stopped reading is no error of the command's; stop quietly, as Unix tools do.
process.stdout.on("error", (error: NodeJS.ErrnoException) => {
  if (error.code !== "EPIPE") throw error;
  process.exit(0);
});
void import("../index.js").then(({ main }) => main());
