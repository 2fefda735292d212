// Build a JavaScript skill into a component: bundle the entry (and `tend-skill`) into one
// ES module with rolldown, then componentize it with componentize-js against wit/skill.
//
// The engine has no `node:fs`, and componentize-js binds only the imports of the target
// world. So the world is built from a copy of wit/skill whose worlds also import
// `wasi:filesystem` (WIT from wasi-wit/, the version the engine itself imports): a skill, or
// `files` in tend-skill.js, can then read what the manifest grants through the host's
// preopens. The component imports these interfaces either way (the engine does); the copy only
// makes them reachable from JavaScript. wasi-wit/ holds WASI 0.2.12's io, clocks and
// filesystem packages as published by the WASI subgroup (Apache-2.0 WITH LLVM-exception).
//
//   node build.mjs --entry app.js --wit ../../wit/skill --world diagnose --out skill.wasm [--disable http]
import { rolldown } from 'rolldown';
import { componentize } from '@bytecodealliance/componentize-js';
import { writeFile, readFile, readdir, mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const args = process.argv.slice(2);
const opt = (name) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : undefined;
};
const all = (name) => args.flatMap((a, i) => (a === `--${name}` ? [args[i + 1]] : []));
const entry = opt('entry');
const wit = opt('wit');
const world = opt('world');
const out = opt('out');
if (!entry || !wit || !world || !out) {
  console.error('usage: node build.mjs --entry app.js --wit DIR --world diagnose|repair --out FILE [--disable FEATURE]...');
  process.exit(2);
}

const here = dirname(fileURLToPath(import.meta.url));
const bundle = await rolldown({
  input: resolve(entry),
  external: (id) => id.startsWith('tend:') || id.startsWith('wasi:'),
  resolve: { alias: { 'tend-skill': join(here, 'tend-skill.js') } },
  logLevel: 'warn',
});
const { output } = await bundle.generate({ format: 'esm' });
const source = output[0].code;

const work = await mkdtemp(join(tmpdir(), 'tend-js-'));
try {
  const sourcePath = join(work, 'skill.js');
  await writeFile(sourcePath, source);
  const witDir = join(work, 'wit');
  await mkdir(join(witDir, 'deps'), { recursive: true });
  for (const f of (await readdir(resolve(wit))).filter((f) => f.endsWith('.wit'))) {
    const text = await readFile(join(resolve(wit), f), 'utf8');
    await writeFile(
      join(witDir, f),
      text.replace(
        /^(world\s+[a-z-]+\s*\{)/gm,
        '$1\n  import wasi:filesystem/types@0.2.12;\n  import wasi:filesystem/preopens@0.2.12;',
      ),
    );
  }
  for (const f of ['io.wit', 'clocks.wit', 'filesystem.wit']) {
    await writeFile(join(witDir, 'deps', f), await readFile(join(here, 'wasi-wit', f)));
  }
  const { component } = await componentize({
    sourcePath,
    witPath: witDir,
    worldName: world,
    disableFeatures: all('disable'),
  });
  await writeFile(out, component);
} finally {
  await rm(work, { recursive: true, force: true });
}
