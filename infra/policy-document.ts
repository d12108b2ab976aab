import * as pulumi from "@pulumi/pulumi";

/**
 * IAM and resource policy documents as typed objects, serialised with `pulumi.jsonStringify` (the
 * project does not call `aws.iam.getPolicyDocument`, which the offline plan would have to render).
 */
export interface PolicyStatement {
  readonly Sid?: string;
  readonly Effect: "Allow" | "Deny";
  readonly Principal?: "*" | Readonly<Record<string, pulumi.Input<string> | readonly pulumi.Input<string>[]>>;
  readonly Action: string | readonly string[];
  /** Absent only in trust policies, which name no resource. */
  readonly Resource?: pulumi.Input<string> | pulumi.Input<readonly pulumi.Input<string>[]>;
  readonly Condition?: Readonly<Record<string, Readonly<Record<string, unknown>>>>;
}

export interface PolicyDocument {
  readonly Version: "2012-10-17";
  readonly Statement: readonly PolicyStatement[];
}

/** The principal that stands for every IAM identity of an account (what a key's admin statement names). */
export function accountRoot(
  partition: pulumi.Input<string>,
  accountId: pulumi.Input<string>,
): pulumi.Output<string> {
  return pulumi.interpolate`arn:${partition}:iam::${accountId}:root`;
}

/**
 * The trust policy of a role that an OIDC provider's tokens assume (GitHub Actions, a cluster's service
 * accounts): tokens for `audience` whose `sub` is exactly one of `subjects`, never a pattern.
 */
export function webIdentityTrustPolicy(
  sid: string,
  trust: {
    readonly providerArn: pulumi.Input<string>;
    /** The issuer without its scheme, as IAM names its condition keys. */
    readonly issuer: string;
    readonly audience: string;
    readonly subjects: readonly string[];
  },
): PolicyDocument {
  return {
    Version: "2012-10-17",
    Statement: [
      {
        Sid: sid,
        Effect: "Allow",
        Principal: { Federated: trust.providerArn },
        Action: "sts:AssumeRoleWithWebIdentity",
        Condition: {
          StringEquals: {
            [`${trust.issuer}:aud`]: trust.audience,
            [`${trust.issuer}:sub`]: [...trust.subjects],
          },
        },
      },
    ],
  };
}
