import { parseCrucibleConfig, type CrucibleConfig } from "../../infra/config";
import { configWith } from "./harness";

/** What the config tests (test/infra/config/) share: stack files' settings as the engine hands them over. */

/** The `crucible:*` settings of a stack file, namespace stripped, as the engine would hand them over. */
export function settingsOf(config: Record<string, string>): Record<string, string> {
  return Object.fromEntries(
    Object.entries(config)
      .filter(([k]) => k.startsWith("crucible:"))
      .map(([k, v]) => [k.slice("crucible:".length), v]),
  );
}

/** A stack's config file with some `crucible:*` keys replaced (as {@link configWith} takes them), parsed. */
export function parseWith(stack: string, overrides: Record<string, unknown> = {}): CrucibleConfig {
  const config = configWith(stack, overrides);
  return parseCrucibleConfig(settingsOf(config), { stack, region: config["aws:region"]! });
}

const KUBECONFIG =
  "apiVersion: v1\nkind: Config\nclusters: []\nusers:\n- name: x\n  user: { token: s3cr3t-token }\n";

/** `crucible:kubernetes` enabled, with a kubeconfig whose token no error may print, and `over`. */
export const kubernetes = (over: Record<string, unknown>) => ({
  "crucible:kubernetes": { enabled: true, kubeconfig: KUBECONFIG, ...over },
});
