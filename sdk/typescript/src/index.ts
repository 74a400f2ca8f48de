/**
 * a3s-box for TypeScript: drive `box serve` (the HTTP API) from Node 20+.
 *
 *   const host = new Host({ url: "http://127.0.0.1:8100", token });   // or { socket: "/path/api.sock" }
 *   await host.apply(boxfileYaml);
 *   const box = await host.box("coder");
 *   const r = await box.exec(["sh", "-c", "echo hi; exit 3"]);         // { exitCode: 3, stdout: "hi\n", ... }
 *
 * Shapes come from the server's OpenAPI document (src/schema.d.ts is generated from
 * schema/openapi.json), so the SDK and the server cannot drift apart.
 */
import * as http from "node:http";
import WebSocket from "ws";
import type { components } from "./schema.js";

type Schemas = components["schemas"];
export type BoxInfo = Schemas["Box"];
export type ApplyResult = Schemas["ApplyResult"];
export type PlanResult = Schemas["PlanResult"];
export type ValidateResult = Schemas["ValidateResult"];
export type PoolInfo = Schemas["Pool"];
export type ImageInfo = Schemas["Image"];
export type FileEntry = Schemas["FileEntry"];
export type Problem = Schemas["Problem"];
export type TokenInfo = Schemas["Token"];
export type TokenCreated = Schemas["TokenCreated"];

export interface HostOptions {
  /** http://HOST:PORT of `box serve --listen` */
  url?: string;
  /** the bearer token (`box serve --print-token`); required over TCP */
  token?: string;
  /** the unix socket of `box serve` (default when no url: $A3S_BOX_HOME/api.sock) */
  socket?: string;
}

export interface ExecOptions {
  stdin?: string;
  env?: Record<string, string>;
  workdir?: string;
  namespace?: "agent" | "business";
  /** seconds */
  timeout?: number;
}

export interface ExecResult {
  exitCode: number | null;
  signal: number | null;
  stdout: string;
  stderr: string;
}

export interface SpawnOptions {
  tty?: boolean;
  env?: Record<string, string>;
  workdir?: string;
  namespace?: "agent" | "business";
  rows?: number;
  cols?: number;
}

export interface BoxEvent {
  time: string;
  who: string;
  what: string;
  target: string;
  result: string;
  [key: string]: unknown;
}

/** A failed call: the server's problem details (RFC 9457), with the CLI's message. */
export class ApiError extends Error {
  readonly status: number;
  readonly problem: Problem;
  constructor(problem: Problem) {
    super(problem.detail);
    this.name = "ApiError";
    this.status = problem.status;
    this.problem = problem;
  }
}

interface Reply {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}

export class Host {
  readonly #url: URL | null;
  readonly #socket: string | null;
  readonly #token: string | undefined;

  constructor(options: HostOptions = {}) {
    this.#token = options.token;
    if (options.url) {
      this.#url = new URL(options.url);
      this.#socket = null;
    } else {
      const home = process.env.A3S_BOX_HOME ?? `${process.env.HOME}/.local/share/a3s-box`;
      this.#url = null;
      this.#socket = options.socket ?? `${home}/api.sock`;
    }
  }

  // --- plumbing ------------------------------------------------------------------
  #options(method: string, path: string, headers: Record<string, string>): http.RequestOptions {
    const h: Record<string, string> = { ...headers };
    if (this.#token) h.authorization = `Bearer ${this.#token}`;
    if (this.#url) {
      return { method, path, headers: h, hostname: this.#url.hostname, port: this.#url.port };
    }
    return { method, path, headers: h, socketPath: this.#socket ?? undefined };
  }

  /** @internal */
  request(method: string, path: string, body?: Buffer | string, contentType?: string): Promise<Reply> {
    return new Promise((resolve, reject) => {
      const headers: Record<string, string> = {};
      if (body !== undefined) headers["content-type"] = contentType ?? "application/json";
      const req = http.request(this.#options(method, path, headers), (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }));
        res.on("error", reject);
      });
      req.on("error", reject);
      if (body !== undefined) req.write(body);
      req.end();
    });
  }

  /** @internal */
  async call<T>(method: string, path: string, body?: unknown, contentType?: string): Promise<T> {
    const raw = body === undefined ? undefined
      : typeof body === "string" || Buffer.isBuffer(body) ? body : JSON.stringify(body);
    const r = await this.request(method, path, raw, contentType);
    if (r.status >= 400) throw toError(r);
    if (r.status === 204 || r.body.length === 0) return undefined as T;
    return JSON.parse(r.body.toString()) as T;
  }

  /** @internal A response to read as a stream; BODY streamed in when given. */
  async stream(method: string, path: string, body?: Buffer | NodeJS.ReadableStream): Promise<http.IncomingMessage> {
    const res = await new Promise<http.IncomingMessage>((resolve, reject) => {
      const headers: Record<string, string> = body === undefined ? {} : { "content-type": "application/x-tar" };
      const req = http.request(this.#options(method, path, headers), resolve);
      req.on("error", reject);
      if (body === undefined) req.end();
      else if (Buffer.isBuffer(body)) req.end(body);
      else body.pipe(req);
    });
    if (method === "GET" && (res.statusCode ?? 0) >= 400) {
      const chunks: Buffer[] = [];
      for await (const c of res) chunks.push(c as Buffer);
      throw toError({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) });
    }
    return res;
  }

  /** @internal */
  websocket(path: string): WebSocket {
    const headers: Record<string, string> = {};
    if (this.#token) headers.authorization = `Bearer ${this.#token}`;
    const url = this.#url ? `ws://${this.#url.host}${path}` : `ws+unix://${this.#socket}:${path}`;
    return new WebSocket(url, { headers });
  }

  // --- Boxfiles -------------------------------------------------------------------
  /** Converge the host to a Boxfile (its YAML); `path` names it in errors and anchors relative paths. */
  apply(boxfile: string, opts: { path?: string; project?: string } = {}): Promise<ApplyResult> {
    return this.call("POST", `/v1/boxfile/apply${query(opts)}`, boxfile, "application/yaml");
  }

  plan(boxfile: string, opts: { path?: string; project?: string } = {}): Promise<PlanResult> {
    return this.call("POST", `/v1/boxfile/plan${query(opts)}`, boxfile, "application/yaml");
  }

  validate(boxfile: string, opts: { path?: string } = {}): Promise<ValidateResult> {
    return this.call("POST", `/v1/boxfile/validate${query(opts)}`, boxfile, "application/yaml");
  }

  // --- boxes, pools, images ----------------------------------------------------------
  boxes(project?: string): Promise<BoxInfo[]> {
    return this.call("GET", `/v1/boxes${query({ project })}`);
  }

  async box(name: string): Promise<Box> {
    const info = await this.call<BoxInfo>("GET", `/v1/boxes/${enc(name)}`);
    return new Box(this, info);
  }

  pools(project?: string): Promise<PoolInfo[]> {
    return this.call("GET", `/v1/pools${query({ project })}`);
  }

  /** Lease a ready box from a warm pool; `release()` it when done. With `timeout`
   * (seconds), when none is ready one is booted while the pool is below max, or the call
   * waits for one; an ApiError (409) once the wait runs out. */
  async acquire(pool: string, opts: { name?: string; project?: string; timeout?: number } = {}):
      Promise<LeasedBox> {
    const info = await this.call<BoxInfo>("POST", `/v1/pools/${enc(pool)}/acquire`, opts);
    return new LeasedBox(this, info);
  }

  images(): Promise<ImageInfo[]> {
    return this.call("GET", "/v1/images");
  }

  // --- sandbox tokens (an admin token's calls) -----------------------------------------
  /** Issue a sandbox token: it may acquire from `templates` (pool names) and use only the
   * boxes it acquired. `token` is shown once; the server keeps its digest. */
  createToken(templates: string[], name = ""): Promise<TokenCreated> {
    return this.call("POST", "/v1/tokens", { templates, name });
  }

  tokens(): Promise<TokenInfo[]> {
    return this.call("GET", "/v1/tokens");
  }

  /** Revoked at once: the token's next request gets a 401. */
  async revokeToken(id: string): Promise<void> {
    await this.call("DELETE", `/v1/tokens/${enc(id)}`);
  }

  /** Pull an image into the store; onEvent sees each progress event. */
  async pull(ref: string, onEvent: (ev: { event: string; data: unknown }) => void = () => undefined):
      Promise<{ name: string; digest: string; size: number }> {
    const r = await this.request("POST", "/v1/images/pull", JSON.stringify({ ref }));
    if (r.status >= 400) throw toError(r);
    for (const block of r.body.toString().split("\n\n")) {
      const event = /^event: (.*)$/m.exec(block)?.[1];
      const data = /^data: (.*)$/m.exec(block)?.[1];
      if (!event || data === undefined) continue;
      const parsed = JSON.parse(data) as Record<string, unknown>;
      onEvent({ event, data: parsed });
      if (event === "error") throw new ApiError(parsed as unknown as Problem);
      if (event === "done") return parsed as unknown as { name: string; digest: string; size: number };
    }
    throw new Error(`pull ${ref}: the server ended without a result`);
  }

  /** Box, pool and image changes as they happen (the audit log), until `signal` aborts. */
  async *events(opts: { signal?: AbortSignal; fromStart?: boolean } = {}): AsyncGenerator<BoxEvent> {
    const path = `/v1/events?follow=true&since=${opts.fromStart ? 0 : -1}`;
    const res = await new Promise<http.IncomingMessage>((resolve, reject) => {
      const req = http.request(this.#options("GET", path, { accept: "text/event-stream" }), resolve);
      req.on("error", reject);
      opts.signal?.addEventListener("abort", () => req.destroy());
      req.end();
    });
    if ((res.statusCode ?? 0) >= 400) {
      const chunks: Buffer[] = [];
      for await (const c of res) chunks.push(c as Buffer);
      throw toError({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) });
    }
    let buf = "";
    try {
      for await (const chunk of res) {
        buf += (chunk as Buffer).toString();
        let end: number;
        while ((end = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, end);
          buf = buf.slice(end + 2);
          const data = block.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
          if (data) yield JSON.parse(data) as BoxEvent;
        }
      }
    } catch (e) {
      if (!opts.signal?.aborted) throw e;
    }
  }
}

export class Files {
  constructor(private readonly host: Host, private readonly box: string) {}

  async read(path: string): Promise<Buffer> {
    const r = await this.host.request("GET", `/v1/boxes/${enc(this.box)}/files${query({ path })}`);
    if (r.status >= 400) throw toError(r);
    return r.body;
  }

  async write(path: string, data: string | Buffer, mode = 0o644): Promise<void> {
    await this.host.call("PUT", `/v1/boxes/${enc(this.box)}/files${query({ path, mode: mode.toString(8) })}`,
      Buffer.isBuffer(data) ? data : Buffer.from(data), "application/octet-stream");
  }

  list(path: string): Promise<FileEntry[]> {
    return this.host.call("GET", `/v1/boxes/${enc(this.box)}/files/list${query({ path })}`);
  }

  async remove(path: string): Promise<void> {
    await this.host.call("DELETE", `/v1/boxes/${enc(this.box)}/files${query({ path })}`);
  }

  /** A file or tree of the box as a tar stream (read as it arrives: any size). */
  downloadTar(path: string): Promise<http.IncomingMessage> {
    return this.host.stream("GET", `/v1/boxes/${enc(this.box)}/files/tar${query({ path })}`);
  }

  /** Extract a tar stream (a Buffer or any readable) into folder `dir` of the box. */
  async uploadTar(dir: string, tar: Buffer | NodeJS.ReadableStream): Promise<void> {
    const res = await this.host.stream("PUT", `/v1/boxes/${enc(this.box)}/files/tar${query({ path: dir })}`, tar);
    const chunks: Buffer[] = [];
    for await (const c of res) chunks.push(c as Buffer);
    if ((res.statusCode ?? 0) >= 400) throw toError({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) });
  }
}

export class Box {
  readonly files: Files;
  constructor(protected readonly host: Host, public info: BoxInfo) {
    this.files = new Files(host, info.id);
  }

  get name(): string {
    return this.info.name;
  }

  /** Run a command to completion. */
  async exec(argv: string[], opts: ExecOptions = {}): Promise<ExecResult> {
    const r = await this.host.call<Schemas["ExecResult"]>("POST", `/v1/boxes/${enc(this.info.id)}/exec`, {
      argv, stdin: opts.stdin ?? null, env: opts.env ?? {}, workdir: opts.workdir ?? "",
      namespace: opts.namespace ?? "agent", timeout: opts.timeout ?? 60,
    });
    return { exitCode: r.exit_code ?? null, signal: r.signal ?? null, stdout: r.stdout, stderr: r.stderr };
  }

  /** Start an interactive process (a terminal with tty: true) over a WebSocket. */
  spawn(argv: string[], opts: SpawnOptions = {}): Promise<Process> {
    const ws = this.host.websocket(`/v1/boxes/${enc(this.info.id)}/exec/ws`);
    return new Promise((resolve, reject) => {
      ws.once("error", reject);
      ws.once("open", () => {
        ws.send(JSON.stringify({ argv, tty: opts.tty ?? false, env: opts.env ?? {}, workdir: opts.workdir ?? "",
          namespace: opts.namespace ?? "agent", rows: opts.rows ?? 24, cols: opts.cols ?? 80 }));
        resolve(new Process(ws));
      });
    });
  }

  async refresh(): Promise<BoxInfo> {
    this.info = await this.host.call<BoxInfo>("GET", `/v1/boxes/${enc(this.info.id)}`);
    return this.info;
  }

  async stop(): Promise<void> {
    this.info = await this.host.call<BoxInfo>("POST", `/v1/boxes/${enc(this.info.id)}/stop`);
  }

  async start(): Promise<void> {
    this.info = await this.host.call<BoxInfo>("POST", `/v1/boxes/${enc(this.info.id)}/start`);
  }

  async delete(): Promise<void> {
    await this.host.call("DELETE", `/v1/boxes/${enc(this.info.id)}`);
  }
}

export class LeasedBox extends Box {
  /** Hand it back: destroyed (default), or returned to its pool idle with keep. */
  async release(opts: { keep?: boolean } = {}): Promise<void> {
    await this.host.call("POST", `/v1/boxes/${enc(this.info.id)}/release`, { keep: opts.keep ?? false });
  }
}

export interface ProcessExit {
  exitCode: number;
  kind: string;
  value: number;
}

/** A process started with Box.spawn: write to it, read what it prints, wait for its end. */
export class Process {
  #data: ((chunk: Buffer) => void)[] = [];
  #stderr: ((chunk: Buffer) => void)[] = [];
  #early: Buffer[] = [];
  #done: Promise<ProcessExit>;

  constructor(private readonly ws: WebSocket) {
    this.#done = new Promise((resolve, reject) => {
      ws.on("message", (raw) => {
        const msg = JSON.parse(raw.toString()) as Record<string, unknown>;
        if (typeof msg.stdout === "string") this.#emit(this.#data, Buffer.from(msg.stdout, "base64"), true);
        if (typeof msg.stderr === "string") this.#emit(this.#stderr, Buffer.from(msg.stderr, "base64"), false);
        if (msg.exit) {
          const e = msg.exit as { code: number; kind: string; value: number };
          resolve({ exitCode: e.code, kind: e.kind, value: e.value });
        }
        if (msg.error) reject(new ApiError(msg.error as Problem));
      });
      ws.on("close", () => reject(new Error("the connection closed before the process ended")));
      ws.on("error", reject);
    });
    this.#done.catch(() => undefined);
  }

  #emit(to: ((chunk: Buffer) => void)[], chunk: Buffer, stdout: boolean): void {
    if (to.length === 0 && stdout) this.#early.push(chunk);
    for (const f of to) f(chunk);
  }

  /** Standard output (with tty: the terminal's output). */
  onData(f: (chunk: Buffer) => void): void {
    this.#data.push(f);
    for (const c of this.#early.splice(0)) f(c);
  }

  onStderr(f: (chunk: Buffer) => void): void {
    this.#stderr.push(f);
  }

  write(data: string | Buffer): void {
    this.ws.send(JSON.stringify({ stdin: Buffer.from(data).toString("base64") }));
  }

  /** Close its standard input. */
  end(): void {
    this.ws.send(JSON.stringify({ eof: true }));
  }

  resize(rows: number, cols: number): void {
    this.ws.send(JSON.stringify({ resize: [rows, cols] }));
  }

  kill(signal = 15): void {
    this.ws.send(JSON.stringify({ signal }));
  }

  /** Leave it: the server kills what it started. */
  close(): void {
    this.ws.close();
  }

  wait(): Promise<ProcessExit> {
    return this.#done;
  }
}

function enc(s: string): string {
  return encodeURIComponent(s);
}

function query(params: Record<string, string | undefined>): string {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null) q.set(k, v);
  const s = q.toString();
  return s ? `?${s}` : "";
}

function toError(r: Reply): ApiError {
  try {
    return new ApiError(JSON.parse(r.body.toString()) as Problem);
  } catch {
    return new ApiError({ type: "about:blank", title: "error", status: r.status, detail: r.body.toString() || `HTTP ${r.status}`,
      problems: [] });
  }
}
