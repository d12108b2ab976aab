import type { Command } from "commander";
import { DockerLauncher } from "../../launch/docker/docker-launcher";
import { cliLogger } from "./shared";

/** `crucible gc`: removes job containers whose runtime process died without cleaning up. */
export function registerGc(program: Command): void {
  program
    .command("gc")
    .description("remove job containers left behind by a crashed crucible process on this host")
    .action(async () => {
      const removed = await new DockerLauncher({ logger: cliLogger() }).gc();
      process.stdout.write(`removed ${removed} orphaned job container${removed === 1 ? "" : "s"}\n`);
    });
}
