// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {ReentrancyGuard} from "@openzeppelin/contracts/utils/ReentrancyGuard.sol";

/// @title AIC escrow for paid runs of aic jobs
/// @notice A user deposits AIC for one paid run of a job (a job's first run, or each time it
/// is resumed: `run` = keccak256(abi.encodePacked("aic-run", owner, job id, run number)), the
/// owner in it so that no other wallet's request names the same run). When the run has ended, the
/// pool's settler settles it once with the amount used: that goes to the treasury and the
/// rest back to the depositor in the same transaction. If the pool never settles, the
/// depositor takes the whole deposit back after the run's paid hours and the grace below.
/// Deposits are kept per depositor: nobody can take a run's slot from its owner by
/// depositing for it first.
contract AICEscrow is ReentrancyGuard {
    using SafeERC20 for IERC20;

    /// How long after a run's paid hours the pool has to settle before its depositor may
    /// reclaim the deposit (a job may wait in a queue, and restart after a lost machine).
    uint64 public constant GRACE = 7 days;
    /// The most hours one run may be paid for (a year), in thousandths.
    uint32 public constant MAX_MILLI_HOURS = 8760 * 1000;

    enum State {
        None,
        Held,
        Settled,
        Reclaimed
    }

    struct Deposit {
        address depositor;
        State state;
        uint64 deadline;
        uint128 amount;
        uint128 used;
    }

    IERC20 public immutable token;
    address public immutable treasury;
    address public immutable settler;

    mapping(address => mapping(bytes32 => Deposit)) public deposits;

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

    constructor(IERC20 token_, address treasury_, address settler_) {
        if (address(token_) == address(0) || treasury_ == address(0) || settler_ == address(0)) revert ZeroAddress();
        token = token_;
        treasury = treasury_;
        settler = settler_;
    }

    /// @notice Deposits `amount` for `run`, paid for `milliHours` thousandths of an hour.
    /// The caller must have approved this contract for `amount` first.
    function deposit(bytes32 run, uint256 amount, uint32 milliHours) external nonReentrant {
        if (amount == 0 || amount > type(uint128).max) revert ZeroAmount();
        if (milliHours == 0 || milliHours > MAX_MILLI_HOURS) revert BadHours(milliHours);
        if (deposits[msg.sender][run].state != State.None) revert AlreadyDeposited(run);
        uint64 deadline = uint64(block.timestamp) + (uint64(milliHours) * 3600 + 999) / 1000 + GRACE;
        deposits[msg.sender][run] = Deposit(msg.sender, State.Held, deadline, uint128(amount), 0);
        token.safeTransferFrom(msg.sender, address(this), amount);
        emit Deposited(run, msg.sender, amount, deadline);
    }

    /// @notice Settles `depositor`'s deposit for `run` once: `used` to the treasury, the rest
    /// back to the depositor.
    function settle(address depositor, bytes32 run, uint256 used) external nonReentrant {
        if (msg.sender != settler) revert NotSettler(msg.sender);
        Deposit storage d = deposits[depositor][run];
        if (d.state != State.Held) revert NotHeld(run, d.state);
        if (used > d.amount) revert UsedMoreThanDeposit(used, d.amount);
        d.state = State.Settled;
        d.used = uint128(used);
        uint256 refund = d.amount - used;
        if (used > 0) token.safeTransfer(treasury, used);
        if (refund > 0) token.safeTransfer(d.depositor, refund);
        emit Settled(run, d.depositor, used, refund);
    }

    /// @notice The depositor takes back a deposit the pool did not settle in time.
    function reclaim(bytes32 run) external nonReentrant {
        Deposit storage d = deposits[msg.sender][run];
        if (d.state != State.Held) revert NotHeld(run, d.state);
        if (block.timestamp <= d.deadline) revert TooEarly(d.deadline);
        d.state = State.Reclaimed;
        token.safeTransfer(d.depositor, d.amount);
        emit Reclaimed(run, d.depositor, d.amount);
    }
}
