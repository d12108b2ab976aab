import { Command, Option } from "commander";
import { STACKS, runProgram, type DeclaredResource, type Plan } from "./lib/mock-engine";
import { toPlanJson } from "./lib/plan-diff";

/**
 * `npm run plan -- --stack <dev|staging|prod> [--json]`: what a stack declares, from the real
 * program under Pulumi's mock engine. No cloud account, no Pulumi CLI.
 */

/** Inputs a reviewer looks at, per resource type (dot paths into the inputs). */
const HIGHLIGHTS: Record<string, readonly string[]> = {
  "aws:ec2/vpc:Vpc": ["cidrBlock"],
  "aws:ec2/subnet:Subnet": ["availabilityZone", "cidrBlock", "mapPublicIpOnLaunch"],
  "aws:ec2/vpcEndpoint:VpcEndpoint": ["serviceName", "vpcEndpointType"],
  "aws:ec2/launchTemplate:LaunchTemplate": [
    "instanceType",
    "metadataOptions.httpTokens",
    "blockDeviceMappings",
  ],
  "aws:autoscaling/group:Group": [
    "minSize",
    "maxSize",
    "desiredCapacity",
    "mixedInstancesPolicy",
    "warmPool",
  ],
  "aws:autoscaling/schedule:Schedule": ["recurrence", "minSize", "timeZone"],
  "aws:ec2/securityGroup:SecurityGroup": ["ingress", "egress"],
  "aws:sqs/queue:Queue": ["visibilityTimeoutSeconds", "messageRetentionSeconds", "redrivePolicy"],
  "aws:cloudwatch/metricAlarm:MetricAlarm": ["metricName", "dimensions", "threshold"],
  "aws:cloudwatch/eventRule:EventRule": ["eventPattern"],
  "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration": ["rules"],
  "aws:budgets/budget:Budget": [
    "name",
    "limitAmount",
    "limitUnit",
    "timeUnit",
    "costFilters",
    "filterExpression",
    "notifications",
  ],
  "aws:lambda/function:Function": ["runtime", "handler", "environment"],
  "aws:ecr/repository:Repository": ["imageTagMutability", "imageScanningConfiguration.scanOnPush"],
  "docker:index/image:Image": ["imageName"],
};

function pick(inputs: Record<string, unknown>, dotted: string): unknown {
  let value: unknown = inputs;
  for (const key of dotted.split(".")) value = (value as Record<string, unknown> | undefined)?.[key];
  return value;
}

function settingsOf(r: DeclaredResource): Record<string, unknown> {
  const keys = HIGHLIGHTS[r.type] ?? [];
  const picked = keys.map((k): [string, unknown] => [k, pick(r.inputs, k)]);
  return Object.fromEntries(picked.filter(([, v]) => v !== undefined));
}

/** The top-level component a resource belongs to: its ancestor just below the stack. */
function componentOf(r: DeclaredResource, byUrn: Map<string, DeclaredResource>): string {
  let current = r;
  // A resource whose parent went unrecorded has no URN or parent: stop there rather than loop on it.
  const seen = new Set([r]);
  for (
    let parent = r.parent ? byUrn.get(r.parent) : undefined;
    parent && parent.type !== "pulumi:pulumi:Stack" && !seen.has(parent);
    parent = parent.parent ? byUrn.get(parent.parent) : undefined
  ) {
    seen.add(parent);
    current = parent;
  }
  return current.custom ? "(stack)" : `${current.type} ${current.name}`;
}

function render(plan: Plan): string {
  const byUrn = new Map(plan.resources.map((r) => [r.urn, r]));
  const groups = new Map<string, Map<string, DeclaredResource[]>>();
  for (const r of plan.resources) {
    if (!r.custom) continue;
    const component = componentOf(r, byUrn);
    const byType = groups.get(component) ?? new Map<string, DeclaredResource[]>();
    byType.set(r.type, [...(byType.get(r.type) ?? []), r]);
    groups.set(component, byType);
  }
  const lines = [`Stack ${plan.stack}: ${plan.resources.filter((r) => r.custom).length} resources`];
  for (const [component, byType] of [...groups].sort(([a], [b]) => a.localeCompare(b))) {
    lines.push("", component);
    for (const [type, items] of [...byType].sort(([a], [b]) => a.localeCompare(b))) {
      lines.push(`  ${type} (${items.length})`);
      for (const item of items) {
        const settings = settingsOf(item);
        const text = Object.keys(settings).length ? `  ${JSON.stringify(settings)}` : "";
        lines.push(`    ${item.name}${text}`);
      }
    }
  }
  lines.push("", "Outputs");
  for (const [k, v] of Object.entries(plan.outputs)) lines.push(`  ${k}: ${JSON.stringify(v)}`);
  return lines.join("\n");
}

async function main(): Promise<void> {
  const opts = new Command("plan")
    .description("Show what a stack declares, offline")
    .addOption(new Option("--stack <name>", "stack to plan").choices(STACKS).makeOptionMandatory())
    .option("--json", "machine-readable output", false)
    .parse()
    .opts<{ stack: string; json: boolean }>();
  const plan = await runProgram(opts.stack);
  if (opts.json) {
    process.stdout.write(`${JSON.stringify(toPlanJson(plan), null, 2)}\n`);
  } else {
    process.stdout.write(`${render(plan)}\n`);
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
