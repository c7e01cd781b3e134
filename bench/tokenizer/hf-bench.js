// hf-bench.js - the same measurement as bench-tokenizer.c with the Hugging Face `tokenizers`
// library (Rust) through its native Node binding @anush008/tokenizers.
//   node hf-bench.js TOKENIZER_JSON CORPUS_JSONL TIMES REPS one-text|rows
// Builds the same input as bench-tokenizer (every corpus "text" concatenated, x TIMES) and
// encodes it as one text, or row by row with encodeBatch (rows). Prints one JSON line like
// bench-tokenizer. Run with RAYON_NUM_THREADS=1 so the batch stays on one thread (run.sh does).
'use strict';
const fs = require('fs');
const { Tokenizer } = require('@anush008/tokenizers');

async function main() {
  const [tokPath, corpusPath, timesArg, repsArg, mode] = process.argv.slice(2);
  const times = Number(timesArg || 20), reps = Number(repsArg || 3);
  const rows = [];
  for (const line of fs.readFileSync(corpusPath, 'utf8').split('\n')) {
    if (line.trim() !== '') rows.push(JSON.parse(line).text);
  }
  const allRows = [];
  for (let i = 0; i < times; i++) allRows.push(...rows);
  const input = allRows.join('');
  const bytes = Buffer.byteLength(input, 'utf8');
  let loadBest = Infinity, tok = null;
  for (let i = 0; i < 3; i++) {
    const t0 = process.hrtime.bigint();
    tok = Tokenizer.fromFile(tokPath);
    const dt = Number(process.hrtime.bigint() - t0) / 1e9;
    loadBest = Math.min(loadBest, dt);
  }
  let best = Infinity, ids = null;
  for (let r = 0; r < reps; r++) {
    const t0 = process.hrtime.bigint();
    let dt;
    if (mode === 'rows') {
      const encs = await tok.encodeBatch(allRows, { addSpecialTokens: false });
      dt = Number(process.hrtime.bigint() - t0) / 1e9;
      ids = [];
      for (const e of encs) for (const id of e.getIds()) ids.push(id);
    } else {
      const enc = await tok.encode(input, null, { addSpecialTokens: false });
      dt = Number(process.hrtime.bigint() - t0) / 1e9;
      ids = enc.getIds();
    }
    best = Math.min(best, dt);
  }
  // FNV-1a over the ids, as bench-tokenizer computes it
  let h = 0xcbf29ce484222325n;
  const prime = 0x100000001b3n, mask = (1n << 64n) - 1n;
  for (const id of ids) {
    h ^= BigInt(id >>> 0);
    h = (h * prime) & mask;
  }
  console.log(JSON.stringify({
    impl: 'hf-tokenizers', mode: mode === 'rows' ? 'rows' : 'one-text', bytes, tokens: ids.length, ids_fnv: h.toString(16).padStart(16, '0'),
    load_ms: +(loadBest * 1e3).toFixed(1), encode_s: +best.toFixed(3),
    mb_per_s: +(bytes / best / 1e6).toFixed(2), tokens_per_s: Math.round(ids.length / best),
  }));
}
main().catch((e) => { console.error(e); process.exit(1); });
