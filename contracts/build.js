// Compiles src/AIC.sol with solc-js into out/AIC.json (ABI + bytecode).
// `node build.js --check` recompiles and fails if out/AIC.json differs (a stale artifact).
const fs = require("fs");
const path = require("path");
const solc = require("solc");

const src = path.join(__dirname, "src", "AIC.sol");
const out = path.join(__dirname, "out", "AIC.json");

function findImports(p) {
  for (const base of [path.join(__dirname, "node_modules"), __dirname]) {
    const full = path.join(base, p);
    if (fs.existsSync(full)) return { contents: fs.readFileSync(full, "utf8") };
  }
  return { error: `not found: ${p}` };
}

const input = {
  language: "Solidity",
  sources: { "AIC.sol": { content: fs.readFileSync(src, "utf8") } },
  settings: {
    optimizer: { enabled: true, runs: 200 },
    evmVersion: "cancun",
    outputSelection: { "*": { "*": ["abi", "evm.bytecode.object"] } },
  },
};
const result = JSON.parse(solc.compile(JSON.stringify(input), { import: findImports }));
const errors = (result.errors || []).filter((e) => e.severity === "error");
if (errors.length) {
  for (const e of errors) console.error(e.formattedMessage);
  process.exit(1);
}
const c = result.contracts["AIC.sol"].AIC;
const artifact = JSON.stringify(
  { contractName: "AIC", compiler: `solc ${solc.version()}`, abi: c.abi, bytecode: "0x" + c.evm.bytecode.object },
  null,
  2,
) + "\n";

if (process.argv.includes("--check")) {
  const have = fs.existsSync(out) ? fs.readFileSync(out, "utf8") : "";
  if (have !== artifact) {
    console.error("contracts/out/AIC.json is stale: run `node contracts/build.js` and commit it");
    process.exit(1);
  }
  console.log("contracts/out/AIC.json is up to date");
} else {
  fs.mkdirSync(path.dirname(out), { recursive: true });
  fs.writeFileSync(out, artifact);
  console.log(`wrote ${out}`);
}
