/**
 * Loading a pipeline module by path, at run time, with a dynamic `import()`: the same path can be
 * loaded again in a worker thread. Every way a module can be unusable (no such file, a syntax or
 * type-stripping error, a throw while it is evaluated, no burst function, an async one) is one
 * PipelineLoadError with a one-line message: the CLI exits 2 with it.
 *
 * A `deno compile`d vpmd can import only modules embedded when it was built (Deno 2 compiles the
 * module graph in; denoland/deno#18327): a pipeline must then be given to `deno compile --include`,
 * and is found by the path it had there, relative to the binary's main module (the embedded tree
 * keeps the repository's layout). Any other file gets an error that says so.
 */
import { isAbsolute, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import type { BurstFunction, PipelineContext, PipelineModule } from "./api.ts";

/** A pipeline module that cannot be used; its message is one line. */
export class PipelineLoadError extends Error {}

/** A loaded, checked pipeline module. */
export interface LoadedPipeline {
  /** The module's URL (to load it again elsewhere). */
  url: string;
  /** Its burst function. */
  fn: BurstFunction;
  /** Its `init`, if it has one. */
  init?: (ctx: PipelineContext) => void | Promise<void>;
  /** Its `close`, if it has one. */
  close?: () => void | Promise<void>;
}

/** The error's first line and, when known, where in the module it happened. */
function oneLine(e: unknown): string {
  const msg = e instanceof Error ? e.message : String(e);
  const first = msg.split("\n")[0].trim();
  const text = `${msg}\n${e instanceof Error ? e.stack ?? "" : ""}`;
  const at = text.match(/at (file:\/\/\S+:\d+:\d+)/)?.[1];
  return at === undefined ? first : `${first} (at ${at})`;
}

function isAsync(f: unknown): boolean {
  const name = (f as { constructor?: { name?: string } }).constructor?.name;
  return name === "AsyncFunction" || name === "AsyncGeneratorFunction";
}

/** Where a compiled binary keeps an embedded `path`: relative to its main module. */
function embeddedUrl(path: string): string | null {
  if (!Deno.build.standalone || isAbsolute(path)) return null;
  return new URL(path, Deno.mainModule).href;
}

/** Import the pipeline module at `path` (a file path, relative to the working directory). */
export async function loadPipeline(path: string): Promise<LoadedPipeline> {
  const where = `--pipeline ${path}`;
  if (path === "") throw new PipelineLoadError("--pipeline needs a file (a TypeScript module)");
  const embedded = embeddedUrl(path);
  let onDisk = true;
  try {
    if (!Deno.statSync(resolve(path)).isFile) throw new PipelineLoadError(`${where}: not a file`);
  } catch (e) {
    if (e instanceof PipelineLoadError) throw e;
    onDisk = false;
  }
  if (!onDisk && embedded === null) throw new PipelineLoadError(`${where}: no such file`);
  let mod: PipelineModule | null = null;
  let url = "";
  let err: unknown = null;
  // A compiled binary: the embedded module first (the file on disk, if any, is not importable).
  for (const u of [embedded, onDisk ? pathToFileURL(resolve(path)).href : null]) {
    if (u === null || mod !== null) continue;
    try {
      mod = await import(u);
      url = u;
    } catch (e) {
      err ??= e;
    }
  }
  if (mod === null) {
    if (Deno.build.standalone) {
      throw new PipelineLoadError(
        `${where}: this vpmd is a compiled binary, which loads only pipelines embedded when it ` +
          `was built (deno compile --include ${path}); run vpmd from source (deno run -A main.ts) ` +
          `to load any file (${oneLine(err)})`,
      );
    }
    throw new PipelineLoadError(`${where}: cannot load the module: ${oneLine(err)}`);
  }
  return checked(mod, where, url);
}

/**
 * Import again, in a forwarding worker, the pipeline module `loadPipeline` loaded from `path` (at
 * `url`): the worker's own copy, with state of its own. Same checks, same errors.
 */
export async function importPipeline(url: string, path: string): Promise<LoadedPipeline> {
  const where = `--pipeline ${path}`;
  let mod: PipelineModule;
  try {
    mod = await import(url);
  } catch (e) {
    throw new PipelineLoadError(`${where}: cannot load the module: ${oneLine(e)}`);
  }
  return checked(mod, where, url);
}

/** The module's burst function, `init` and `close`, checked. */
function checked(mod: PipelineModule, where: string, url: string): LoadedPipeline {
  const fn = mod.default ?? mod.burst;
  if (typeof fn !== "function") {
    throw new PipelineLoadError(
      `${where}: the module exports no burst function; write ` +
        `'export default function (b: Burst) { ... }' (or export it as 'burst')`,
    );
  }
  if (isAsync(fn)) {
    throw new PipelineLoadError(
      `${where}: the burst function is async; it must be synchronous (do asynchronous work in ` +
        `init, or on a timer)`,
    );
  }
  for (const k of ["init", "close"] as const) {
    if (mod[k] !== undefined && typeof mod[k] !== "function") {
      throw new PipelineLoadError(`${where}: the export '${k}' is not a function`);
    }
  }
  return { url, fn, init: mod.init, close: mod.close };
}
