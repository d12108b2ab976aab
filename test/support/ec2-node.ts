import { EventEmitter } from "node:events";
import type { IncomingMessage, ServerResponse } from "node:http";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";

/**
 * One AWS API call as the SDK serialised it: Auto Scaling and EC2 speak query protocols (form fields such
 * as `InstanceIds.member.1`), CloudWatch its JSON protocol (the request object as sent).
 */
export interface QueryCall {
  readonly action: string;
  readonly params: Readonly<Record<string, unknown>>;
}

/**
 * What an EC2 node sees on loopback: the instance metadata service (IMDSv2 only: a GET without a valid
 * session token is refused, as the launch template requires) and the query API that Auto Scaling and
 * CloudWatch speak, recording every call so tests see exactly what the real SDK clients sent. An instance
 * marked unhealthy (SetInstanceHealth) is terminated, as its group would.
 */
export class Ec2Node extends EventEmitter<{ call: [QueryCall]; read: [string] }> {
  /** Metadata paths under `/latest/meta-data/`; a missing path answers 404, as on EC2. */
  readonly metadata = new Map<string, string>();
  readonly calls: QueryCall[] = [];
  /** Actions that answer with this error code instead of success. */
  readonly failing = new Map<string, string>();
  /** Query actions that answer with this XML document instead of an empty result (e.g. EC2's). */
  readonly answers = new Map<string, string>();
  /** False: the token request is refused (403), as when the instance's metadata access is turned off. */
  issuesTokens = true;
  private readonly tokens = new Set<string>();
  private readonly server = createServer((req, res) => void this.answer(req, res));

  async start(): Promise<string> {
    await new Promise<void>((resolve) => this.server.listen(0, "127.0.0.1", resolve));
    return `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  async stop(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise((resolve) => this.server.close(resolve));
  }

  /** Resolves with the next call of `action` (already made ones included), or fails after `ms`. */
  nextCall(action: string, predicate: (call: QueryCall) => boolean = () => true, ms = 20_000) {
    const seen = this.calls.find((c) => c.action === action && predicate(c));
    if (seen) return Promise.resolve(seen);
    return new Promise<QueryCall>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.off("call", listener);
        reject(new Error(`no ${action} call within ${ms} ms; calls: ${JSON.stringify(this.calls)}`));
      }, ms);
      const listener = (call: QueryCall): void => {
        if (call.action !== action || !predicate(call)) return;
        clearTimeout(timer);
        this.off("call", listener);
        resolve(call);
      };
      this.on("call", listener);
    });
  }

  /** Resolves after `count` more reads of a metadata path: proof that a poller looked and saw no change. */
  reads(path: string, count: number, ms = 20_000): Promise<void> {
    return new Promise((resolve, reject) => {
      let left = count;
      const timer = setTimeout(() => {
        this.off("read", listener);
        reject(new Error(`${path} was not read ${count} times within ${ms} ms`));
      }, ms);
      const listener = (read: string): void => {
        if (read !== path || --left > 0) return;
        clearTimeout(timer);
        this.off("read", listener);
        resolve();
      };
      this.on("read", listener);
    });
  }

  private async answer(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const body = await new Promise<string>((resolve) => {
      let text = "";
      req.on("data", (chunk: Buffer) => (text += chunk.toString()));
      req.on("end", () => resolve(text));
    });
    const url = new URL(req.url ?? "/", "http://node");
    if (req.method === "PUT" && url.pathname === "/latest/api/token") {
      if (!this.issuesTokens) return reply(res, 403, "Forbidden");
      if (!req.headers["x-aws-ec2-metadata-token-ttl-seconds"]) return reply(res, 400, "");
      const token = `token-${this.tokens.size + 1}`;
      this.tokens.add(token);
      return reply(res, 200, token);
    }
    if (req.method === "GET" && url.pathname.startsWith("/latest/meta-data/")) {
      if (!this.tokens.has(String(req.headers["x-aws-ec2-metadata-token"]))) return reply(res, 401, "");
      const path = url.pathname.slice("/latest/meta-data/".length);
      const value = this.metadata.get(path);
      this.emit("read", path);
      return value === undefined ? reply(res, 404, "Not Found") : reply(res, 200, value);
    }
    const target = req.headers["x-amz-target"];
    if (req.method === "POST" && typeof target === "string") {
      const call = {
        action: target.slice(target.lastIndexOf(".") + 1),
        params: JSON.parse(body) as Record<string, unknown>,
      };
      const code = this.record(call);
      const type = "application/x-amz-json-1.0";
      if (code)
        return reply(res, 400, JSON.stringify({ __type: code, message: `${code} for ${call.action}` }), type);
      return reply(res, 200, "{}", type);
    }
    if (req.method === "POST") {
      const params = Object.fromEntries(new URLSearchParams(body));
      const call = { action: params.Action ?? "", params };
      const code = this.record(call);
      if (!code && call.action === "SetInstanceHealth") this.replaceIfUnhealthy(params);
      if (code) {
        return reply(
          res,
          400,
          `<ErrorResponse><Error><Type>Sender</Type><Code>${code}</Code><Message>${code} for ${call.action}</Message></Error><RequestId>r-1</RequestId></ErrorResponse>`,
          "text/xml",
        );
      }
      return reply(
        res,
        200,
        this.answers.get(call.action) ??
          `<${call.action}Response><${call.action}Result/><ResponseMetadata><RequestId>r-1</RequestId></ResponseMetadata></${call.action}Response>`,
        "text/xml",
      );
    }
    reply(res, 404, "");
  }

  /**
   * What the group does with this instance once it is marked unhealthy: terminates it through its
   * termination hook, which the metadata service shows as the target lifecycle state `Terminated`.
   */
  private replaceIfUnhealthy(params: Readonly<Record<string, string>>): void {
    if (params.HealthStatus === "Unhealthy" && params.InstanceId === this.metadata.get("instance-id"))
      this.metadata.set("autoscaling/target-lifecycle-state", "Terminated");
  }

  /** Records the call; returns the error code it must fail with, if any. */
  private record(call: QueryCall): string | undefined {
    this.calls.push(call);
    this.emit("call", call);
    return this.failing.get(call.action);
  }
}

function reply(res: ServerResponse, status: number, body: string, type = "text/plain"): void {
  res.writeHead(status, { "content-type": type });
  res.end(body);
}
