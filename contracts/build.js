// Compiles the contracts in src/ with solc-js into out/<Name>.json (ABI + bytecode): AIC
// (the token) and AICEscrow (deposits for paid runs, settled by the pool).
// `node build.js --check` recompiles and fails if an artifact differs (a stale one).
const fs = require("fs");
const path = require("path");
const solc = require("solc");

const CONTRACTS = ["AIC", "AICEscrow"];

function findImports(p) {
  for (const base of [path.join(__dirname, "node_modules"), __dirname]) {
    const full = path.join(base, p);
    if (fs.existsSync(full)) return { contents: fs.readFileSync(full, "utf8") };
  }
  return { error: `not found: ${p}` };
}

const sources = {};
for (const name of CONTRACTS) {
  sources[`${name}.sol`] = { content: fs.readFileSync(path.join(__dirname, "src", `${name}.sol`), "utf8") };
}
const input = {
  language: "Solidity",
  sources,
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

let stale = false;
for (const name of CONTRACTS) {
  const c = result.contracts[`${name}.sol`][name];
  const artifact =
    JSON.stringify(
      { contractName: name, compiler: `solc ${solc.version()}`, abi: c.abi, bytecode: "0x" + c.evm.bytecode.object },
      null,
      2,
    ) + "\n";
  const out = path.join(__dirname, "out", `${name}.json`);
  if (process.argv.includes("--check")) {
    const have = fs.existsSync(out) ? fs.readFileSync(out, "utf8") : "";
    if (have !== artifact) {
      console.error(`contracts/out/${name}.json is stale: run \`node contracts/build.js\` and commit it`);
      stale = true;
    } else {
      console.log(`contracts/out/${name}.json is up to date`);
    }
  } else {
    fs.mkdirSync(path.dirname(out), { recursive: true });
    fs.writeFileSync(out, artifact);
    console.log(`wrote ${out}`);
  }
}
if (stale) process.exit(1);
