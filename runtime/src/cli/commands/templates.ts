import type { Command } from "commander";
import { describeNeeds, initTemplate, listTemplates, TemplateError } from "../../job/templates";
import { printJson, UsageError } from "./shared";

/** `crucible templates` lists the job templates; `crucible init TEMPLATE DIR` starts a job from one. */
export function registerTemplates(program: Command): void {
  program
    .command("templates")
    .description("list the job templates to start from")
    .option("--json", "print them as JSON")
    .action(async (opts: { json?: boolean }) => {
      const templates = await listTemplates();
      if (opts.json) {
        printJson(templates.map(({ name, summary, needs }) => ({ name, summary, needs })));
        return;
      }
      const width = Math.max(...templates.map((t) => t.name.length));
      for (const t of templates) {
        process.stdout.write(`${t.name.padEnd(width)}  ${t.summary}\n`);
        process.stdout.write(`${" ".repeat(width)}  needs ${describeNeeds(t.needs)}\n`);
      }
    });
  program
    .command("init")
    .description("copy a job template into a new directory")
    .argument("<template>", "a template name (see `crucible templates`)")
    .argument("<dir>", "the new job directory")
    .action(async (name: string, dir: string) => {
      const template = await initTemplate(name, dir).catch((error: unknown) => {
        throw error instanceof TemplateError ? new UsageError(error.message) : error;
      });
      process.stdout.write(`created ${dir} from ${template.name}: run it with \`crucible run ${dir}\`\n`);
    });
}
