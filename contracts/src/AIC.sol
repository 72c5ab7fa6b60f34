// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";

/// @title AI Crypto (AIC)
/// @notice The pool's payment token: an ERC-20 with 18 decimals. The owner mints; users
/// pay for jobs with plain transfers to the pool treasury, which the validate function
/// checks on chain.
contract AIC is ERC20, Ownable {
    constructor(address initialOwner) ERC20("AI Crypto", "AIC") Ownable(initialOwner) {}

    function mint(address to, uint256 amount) external onlyOwner {
        _mint(to, amount);
    }
}
