"""Shared set-up for the economy tests: a genesis on the test localnet and IO handed to fresh keys."""

from __future__ import annotations

from pathlib import Path

from solders.keypair import Keypair
from solders.message import Message
from solders.transaction import Transaction

from p2pnode.chain import token as tk
from p2pnode.chain.genesis import devnet_operator_keys, run_genesis
from p2pnode.chain.multisig import sign_partial
from p2pnode.chain.network import NetworkParams


async def make_network(client, tmp: Path, *, operators: int = 3, threshold: int = 2, **overrides):
    """Genesis on the shared localnet with devnet operator keys; returns (params, operator keypairs)."""
    deployer = Keypair()
    await client.airdrop(deployer.pubkey(), 10**9)
    ops = devnet_operator_keys(tmp / "operators", operators)
    params, created = await run_genesis(client, deployer, [o.solana_keypair().pubkey() for o in ops], threshold,
                                        tmp / "network.json", **overrides)
    assert created
    kps = [o.solana_keypair() for o in ops]
    for kp in kps:
        await client.airdrop(kp.pubkey(), 10**9)
    return params, kps


async def give_io(client, params: NetworkParams, ops: list[Keypair], to: Keypair, amount: int) -> None:
    """Quorum transfer from the launch treasury to `to`'s token account (how a devnet hands out test IO)."""
    mint = tk.pubkey(params.mint)
    signers = ops[: params.threshold]
    ixs = [tk.create_ata(signers[0].pubkey(), to.pubkey(), mint),
           tk.transfer(tk.pubkey(params.treasury), mint, tk.ata(to.pubkey(), mint), tk.pubkey(params.multisig),
                       amount, [s.pubkey() for s in signers])]
    bh = await client.latest_blockhash()
    tx = Transaction.new_unsigned(Message.new_with_blockhash(ixs, signers[0].pubkey(), bh))
    await client.send(sign_partial(tx, *signers))


async def io_balance(client, owner, mint) -> int:
    acc = await client.get_account(tk.ata(tk.pubkey(owner), tk.pubkey(mint)))
    return 0 if acc is None else tk.parse_token_account(acc.data).amount
