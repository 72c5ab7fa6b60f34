//! The escrow (`contracts/src/AICEscrow.sol`): a user deposits AIC for one paid run of a
//! job, the pool settles it once with the amount used (the rest goes back in the same
//! transaction), and a deposit the pool never settles can be reclaimed after its deadline.
//!
//! A run is a job's first run, or one of its resumes: [`run_id`] keys a deposit by its owner,
//! job id and run number, so each resume is paid and settled on its own, and no other
//! wallet's request for the same job id names the same run.

use alloy::network::TransactionBuilder;
use alloy::primitives::{Address, B256, Bytes, U256, keccak256};
use alloy::providers::Provider;
use alloy::rpc::types::TransactionRequest;
use alloy::sol;
use alloy::sol_types::SolValue;

sol! {
    #[sol(rpc)]
    #[derive(Debug)]
    interface IAICEscrow {
        enum State { None, Held, Settled, Reclaimed }
        event Deposited(bytes32 indexed run, address indexed depositor, uint256 amount, uint64 deadline);
        event Settled(bytes32 indexed run, address indexed depositor, uint256 used, uint256 refunded);
        event Reclaimed(bytes32 indexed run, address indexed depositor, uint256 amount);
        error ZeroAddress();
        error ZeroAmount();
        error BadHours(uint32 milliHours);
        error AlreadyDeposited(bytes32 run);
        error NotHeld(bytes32 run, State state);
        error NotSettler(address caller);
        error UsedMoreThanDeposit(uint256 used, uint256 amount);
        error TooEarly(uint64 deadline);
        function GRACE() external view returns (uint64);
        function token() external view returns (address);
        function treasury() external view returns (address);
        function settler() external view returns (address);
        function deposit(bytes32 run, uint256 amount, uint32 milliHours) external;
        function settle(address depositor, bytes32 run, uint256 used) external;
        function reclaim(bytes32 run) external;
        function deposits(address depositor, bytes32 run) external view returns (address depositor_, State state, uint64 deadline, uint128 amount, uint128 used);
    }

    #[sol(rpc)]
    interface IERC20Approve {
        function approve(address spender, uint256 value) external returns (bool);
        function allowance(address owner, address spender) external view returns (uint256);
    }
}

/// `contracts/out/AICEscrow.json`, compiled by `node contracts/build.js`.
pub const ARTIFACT: &str = include_str!("../../contracts/out/AICEscrow.json");

/// The deposit key of run `run` (0 for the first, then each resume) of `owner`'s job `job`:
/// `keccak256(abi.encodePacked("aic-run", owner, job, run))`. The owner is part of it: a
/// second wallet's request under the same job id names another run, never the owner's
/// deposit (it once did, and its refusal refunded the owner's deposit in full while the
/// owner's job ran).
pub fn run_id(owner: Address, job: &str, run: u32) -> B256 {
    keccak256(("aic-run", owner, job.to_string(), run).abi_encode_packed())
}

/// The key the escrow's deposits had before it named the owner
/// (`keccak256(abi.encodePacked("aic-run", job, run))`): such deposits pay for no job, and
/// their depositors reclaim them ([`deposits_of`], `aic reclaim`).
pub fn legacy_run_id(job: &str, run: u32) -> B256 {
    keccak256(("aic-run", job.to_string(), run).abi_encode_packed())
}

/// One deposit `depositor` made, as its `Deposited` event says, with what the escrow holds
/// for it now.
#[derive(Clone, Debug)]
pub struct DepositSeen {
    pub run: B256,
    pub amount: U256,
    pub deadline: u64,
    pub tx: Option<B256>,
    pub now: Held,
}

/// Every deposit `depositor` made into `escrow` (its `Deposited` events, oldest first), with
/// its state now.
pub async fn deposits_of<P: Provider>(
    provider: &P,
    escrow: Address,
    depositor: Address,
) -> anyhow::Result<Vec<DepositSeen>> {
    use alloy::sol_types::SolEvent;
    let filter = alloy::rpc::types::Filter::new()
        .address(escrow)
        .event_signature(IAICEscrow::Deposited::SIGNATURE_HASH)
        .topic2(depositor.into_word())
        .from_block(0);
    let mut out = Vec::new();
    for log in provider.get_logs(&filter).await? {
        let tx = log.transaction_hash;
        let Ok(d) = log.log_decode::<IAICEscrow::Deposited>() else { continue };
        let d = d.inner.data;
        let now = held(provider, escrow, depositor, d.run).await?;
        out.push(DepositSeen { run: d.run, amount: d.amount, deadline: d.deadline, tx, now });
    }
    Ok(out)
}

/// What a wallet is asked to send to pay `amount` AIC for one run: a deposit into the pool's
/// escrow (an allowance for it first), or where the pool has none a transfer to its treasury.
/// The wallet page of `aic` and the web app (through the gateway's `/v1/draft`) both send
/// these calls.
#[derive(Clone, Debug)]
pub struct Payment {
    pub token: Address,
    pub treasury: Address,
    pub amount: u128,
    pub escrow: Option<EscrowPayment>,
}

/// The thousandths of an hour a request pays for (as quoted: rounded up, at least one).
pub fn milli_hours(hours: f64) -> u32 {
    (hours * 1000.0).ceil().clamp(1.0, u32::MAX as f64) as u32
}

/// A deposit into `contract` for run `run`, paid for `milli_hours`.
#[derive(Clone, Debug)]
pub struct EscrowPayment {
    pub contract: Address,
    pub run: B256,
    pub milli_hours: u32,
}

impl Payment {
    /// The payment of `amount` by `owner` for run `run` of its job `job`, `hours` paid, on `chain`.
    pub fn of(chain: &crate::ChainConfig, amount: u128, owner: Address, job: &str, run: u32, hours: f64) -> Payment {
        Payment {
            token: chain.token,
            treasury: chain.treasury,
            amount,
            escrow: chain.escrow.map(|contract| EscrowPayment {
                contract,
                run: run_id(owner, job, run),
                milli_hours: milli_hours(hours),
            }),
        }
    }

    /// The paying call: (to, calldata).
    pub fn call(&self) -> (Address, Vec<u8>) {
        use alloy::sol_types::SolCall;
        let value = U256::from(self.amount);
        match &self.escrow {
            Some(e) => (
                e.contract,
                IAICEscrow::depositCall { run: e.run, amount: value, milliHours: e.milli_hours }.abi_encode(),
            ),
            None => (self.token, crate::token::IAIC::transferCall { to: self.treasury, value }.abi_encode()),
        }
    }

    /// The allowance the deposit needs first: (to, calldata).
    pub fn approval(&self) -> Option<(Address, Vec<u8>)> {
        use alloy::sol_types::SolCall;
        let e = self.escrow.as_ref()?;
        let value = U256::from(self.amount);
        Some((self.token, IERC20Approve::approveCall { spender: e.contract, value }.abi_encode()))
    }

    /// Both calls as JSON for a page: `{to, data, approve: {to, data}?}` (hex).
    pub fn to_json(&self) -> serde_json::Value {
        let hex = |d: Vec<u8>| format!("0x{}", alloy::hex::encode(d));
        let (to, data) = self.call();
        serde_json::json!({
            "to": to.to_string(),
            "data": hex(data),
            "approve": self.approval().map(|(to, data)| serde_json::json!({"to": to.to_string(), "data": hex(data)})),
        })
    }
}

/// A deposit as the contract holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    pub depositor: Address,
    /// 0 none, 1 held, 2 settled, 3 reclaimed.
    pub state: u8,
    pub deadline: u64,
    pub amount: U256,
    pub used: U256,
}

pub const NONE: u8 = 0;
pub const HELD: u8 = 1;
pub const SETTLED: u8 = 2;
pub const RECLAIMED: u8 = 3;

/// Deploys the escrow for `token`, paying `treasury`, settled by `settler`.
pub async fn deploy<P: Provider>(
    provider: &P,
    from: Address,
    token: Address,
    treasury: Address,
    settler: Address,
) -> anyhow::Result<Address> {
    let v: serde_json::Value = serde_json::from_str(ARTIFACT)?;
    let hex = v["bytecode"].as_str().ok_or_else(|| anyhow::anyhow!("artifact without bytecode"))?;
    let mut code = hex.parse::<Bytes>()?.to_vec();
    code.extend_from_slice(&(token, treasury, settler).abi_encode_params());
    let tx = TransactionRequest::default().with_from(from).with_deploy_code(code);
    let receipt = provider.send_transaction(tx).await?.get_receipt().await?;
    anyhow::ensure!(receipt.status(), "deploying the escrow reverted");
    receipt.contract_address.ok_or_else(|| anyhow::anyhow!("deployment produced no contract"))
}

/// Approves the escrow for `amount` and deposits it for `run` (two transactions, as a wallet
/// sends them); returns the deposit's transaction hash once mined.
pub async fn deposit<P: Provider>(
    provider: &P,
    token: Address,
    escrow: Address,
    run: B256,
    amount: U256,
    milli_hours: u32,
) -> anyhow::Result<B256> {
    let erc20 = IERC20Approve::new(token, provider);
    let approve = erc20.approve(escrow, amount);
    let gas = approve.estimate_gas().await?;
    let approve = approve.gas(crate::token::with_margin(gas)).send().await?.get_receipt().await?;
    anyhow::ensure!(approve.status(), "approving the escrow reverted (not enough AIC?)");
    let contract = IAICEscrow::new(escrow, provider);
    let call = contract.deposit(run, amount, milli_hours);
    let refused = |e: alloy::contract::Error| anyhow::anyhow!("the escrow refused the deposit: {}", revert_reason(&e));
    let gas = call.estimate_gas().await.map_err(refused)?;
    let pending = call.gas(crate::token::with_margin(gas)).send().await.map_err(refused)?;
    let r = pending.get_receipt().await?;
    anyhow::ensure!(r.status(), "the deposit {} reverted", r.transaction_hash);
    Ok(r.transaction_hash)
}

/// What the escrow holds from `depositor` for `run`.
pub async fn held<P: Provider>(provider: &P, escrow: Address, depositor: Address, run: B256) -> anyhow::Result<Held> {
    let d = IAICEscrow::new(escrow, provider).deposits(depositor, run).call().await?;
    Ok(Held {
        depositor: d.depositor_,
        state: d.state as u8,
        deadline: d.deadline,
        amount: U256::from(d.amount),
        used: U256::from(d.used),
    })
}

/// A contract revert as a sentence, when it is one of the escrow's errors.
pub fn revert_reason(e: &alloy::contract::Error) -> String {
    match e.as_decoded_interface_error::<IAICEscrow::IAICEscrowErrors>() {
        Some(err) => format!("{err:?}"),
        None => e.to_string(),
    }
}
