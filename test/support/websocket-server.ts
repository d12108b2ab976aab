import { createHash } from "node:crypto";
import { EventEmitter } from "node:events";
import type { IncomingMessage } from "node:http";
import type { Duplex } from "node:stream";

/**
 * The server side of a WebSocket (RFC 6455) on an upgraded HTTP connection, as far as the API server's
 * exec endpoint needs it: the handshake with a subprotocol, binary messages in either direction (a
 * client's masked and maybe fragmented), ping, and the close handshake. No extensions: none is agreed.
 */

/** RFC 6455 §1.3: what the server appends to the client's key before hashing it. */
const HANDSHAKE_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
const OPCODE = { continuation: 0x0, text: 0x1, binary: 0x2, close: 0x8, ping: 0x9, pong: 0xa } as const;

export class ServerWebSocket extends EventEmitter<{ message: [Buffer]; close: [] }> {
  private pending = Buffer.alloc(0);
  private fragments: Buffer[] = [];
  private closed = false;

  constructor(
    private readonly socket: Duplex,
    /** The subprotocol agreed in the handshake. */
    readonly protocol: string,
  ) {
    super();
    socket.on("data", (chunk: Buffer) => this.feed(chunk));
    socket.on("close", () => this.ended());
    socket.on("error", () => this.ended());
  }

  /** Sends one binary message, unmasked as a server's must be. */
  send(data: Buffer): void {
    this.frame(OPCODE.binary, data);
  }

  /** Starts the close handshake (or answers the client's) and ends the connection. */
  close(code = 1000): void {
    if (this.closed) return;
    const payload = Buffer.alloc(2);
    payload.writeUInt16BE(code);
    this.frame(OPCODE.close, payload);
    this.socket.end();
    this.ended();
  }

  feed(chunk: Buffer): void {
    this.pending = Buffer.concat([this.pending, chunk]);
    for (;;) {
      const frame = readFrame(this.pending);
      if (!frame) return;
      this.pending = this.pending.subarray(frame.length);
      this.handle(frame.opcode, frame.fin, frame.payload);
    }
  }

  private handle(opcode: number, fin: boolean, payload: Buffer): void {
    if (opcode === OPCODE.close) return this.close();
    if (opcode === OPCODE.ping) return this.frame(OPCODE.pong, payload);
    if (opcode === OPCODE.pong) return;
    this.fragments.push(payload);
    if (!fin) return;
    const message = Buffer.concat(this.fragments);
    this.fragments = [];
    this.emit("message", message);
  }

  private frame(opcode: number, payload: Buffer): void {
    if (this.closed || this.socket.destroyed) return;
    const length = payload.length;
    const head = length < 126 ? Buffer.alloc(2) : length < 0x10000 ? Buffer.alloc(4) : Buffer.alloc(10);
    head[0] = 0x80 | opcode;
    if (length < 126) head[1] = length;
    else if (length < 0x10000) {
      head[1] = 126;
      head.writeUInt16BE(length, 2);
    } else {
      head[1] = 127;
      head.writeBigUInt64BE(BigInt(length), 2);
    }
    this.socket.write(Buffer.concat([head, payload]));
  }

  private ended(): void {
    if (this.closed) return;
    this.closed = true;
    this.emit("close");
  }
}

/** One whole frame at the start of `data`, unmasked, or undefined until it has all arrived. */
function readFrame(
  data: Buffer,
): { opcode: number; fin: boolean; payload: Buffer; length: number } | undefined {
  if (data.length < 2) return undefined;
  const fin = (data[0]! & 0x80) !== 0;
  const opcode = data[0]! & 0x0f;
  const masked = (data[1]! & 0x80) !== 0;
  let length = data[1]! & 0x7f;
  let offset = 2;
  if (length === 126) {
    if (data.length < 4) return undefined;
    length = data.readUInt16BE(2);
    offset = 4;
  } else if (length === 127) {
    if (data.length < 10) return undefined;
    length = Number(data.readBigUInt64BE(2));
    offset = 10;
  }
  const maskOffset = offset;
  if (masked) offset += 4;
  if (data.length < offset + length) return undefined;
  const payload = Buffer.from(data.subarray(offset, offset + length));
  if (masked) for (let i = 0; i < payload.length; i++) payload[i]! ^= data[maskOffset + (i % 4)]!;
  return { opcode, fin, payload, length: offset + length };
}

/**
 * Completes a WebSocket handshake on an HTTP upgrade, agreeing the first of `protocols` (the server's
 * preference) that the client offers; refuses the upgrade when it offers none of them.
 */
export function acceptWebSocket(
  req: IncomingMessage,
  socket: Duplex,
  head: Buffer,
  protocols: readonly string[],
): ServerWebSocket | undefined {
  const key = req.headers["sec-websocket-key"];
  const offered = String(req.headers["sec-websocket-protocol"] ?? "")
    .split(",")
    .map((p) => p.trim());
  const protocol = protocols.find((p) => offered.includes(p));
  if (typeof key !== "string" || !protocol) {
    socket.end("HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n");
    return undefined;
  }
  const accept = createHash("sha1")
    .update(key + HANDSHAKE_GUID)
    .digest("base64");
  socket.write(
    [
      "HTTP/1.1 101 Switching Protocols",
      "Upgrade: websocket",
      "Connection: Upgrade",
      `Sec-WebSocket-Accept: ${accept}`,
      `Sec-WebSocket-Protocol: ${protocol}`,
      "",
      "",
    ].join("\r\n"),
  );
  const ws = new ServerWebSocket(socket, protocol);
  if (head.length > 0) ws.feed(head);
  return ws;
}
