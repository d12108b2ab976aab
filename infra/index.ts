import { TIER_NAMES, TIERS } from "../runtime/src/catalog";
import { Budgets } from "./budgets";
import { loadConfig } from "./config";
import { tierHourlyCosts } from "./finance";
import { Notifications } from "./notifications";
import { awsProvider } from "./providers";
import { Workspaces } from "./workspaces";

// Wiring only: every concern is a component in its own module; outputs are what CI and finance read.
const config = loadConfig();
const aws = awsProvider(config);

const enabledTiers = TIER_NAMES.filter((t) => config.fleet.tiers[t]?.enabled);

export const environment = config.environment;
export const region = config.region;
export const tiers = Object.fromEntries(
  enabledTiers.map((t) => [t, { ...TIERS[t], ...config.fleet.tiers[t]?.limits }]),
);

// Budgets and alarms share one encrypted topic; finance reads the budgets and cost figures below.
const notifications = new Notifications(
  "notifications",
  { emails: config.budgets.emails },
  { provider: aws },
);
const workspaces = new Workspaces("workspaces", { settings: config.workspaces }, { provider: aws });
const budgetSet = new Budgets(
  "budgets",
  { environment: config.environment, settings: config.budgets, topicArn: notifications.topicArn },
  { provider: aws },
);

export const notificationTopicArn = notifications.topicArn;
export const storage = {
  bucketName: workspaces.bucketName,
  bucketArn: workspaces.bucketArn,
  datasetsBucketName: workspaces.datasetsBucketName,
  datasetsBucketArn: workspaces.datasetsBucketArn,
  workspacesPrefix: workspaces.workspacesPrefix,
  quotaGiBPerProject: workspaces.quotaGiBPerProject,
  kmsKeyArn: workspaces.kmsKeyArn,
};
export const budgets = budgetSet.budgets;
export const tierHourlyCost = tierHourlyCosts(config);
