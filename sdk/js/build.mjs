// Build a JavaScript skill into a component: bundle the entry (and `tend-skill`) into one
// ES module with rolldown, then componentize it with componentize-js against wit/skill.
//
//   node build.mjs --entry app.js --wit ../../wit/skill --world diagnose --out skill.wasm [--disable http]
import { rolldown } from 'rolldown';
import { componentize } from '@bytecodealliance/componentize-js';
import { writeFile, mkdtemp, rm } from 'node:fs/promises';
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
  const { component } = await componentize({
    sourcePath,
    witPath: resolve(wit),
    worldName: world,
    disableFeatures: all('disable'),
  });
  await writeFile(out, component);
} finally {
  await rm(work, { recursive: true, force: true });
}
