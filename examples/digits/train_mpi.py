"""Data-parallel training of train.py's MLP with MPI: every rank holds the same model,
trains on its own shard of each batch, and the gradients are averaged with Allreduce, so
all ranks take the same step. Rank 0 writes the checkpoint; a restarted job resumes from it.

Run by aic's `mpi` launcher (one rank per GPU slot of every miner):
    aic run examples/digits/train_mpi.py --launcher mpi --miners 2 --data digits -- --epochs 30
"""
import time

import numpy as np
from mpi4py import MPI

from train import arguments, checkpoint, digest, end_of_epoch, finish, folders, gradients, init, load, split


def main():
    args = arguments(batch=64, batch_help="global batch, split over the ranks")
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    data_dir, out_dir, ckpt = folders()

    x, y = load(data_dir)
    xtr, ytr, xte, yte = split(x, y, args.seed)
    params, start = init(args.hidden, args.seed), 0
    # Rank 0's checkpoint (if any) is the truth; everyone starts from it.
    state = comm.bcast(checkpoint(ckpt) if rank == 0 else None, root=0)
    if state is not None:
        params, start = state
        if rank == 0:
            print(f"resuming from checkpoint at epoch {start}")
    if rank == 0:
        print(f"{size} ranks; training on {len(ytr)} images, testing on {len(yte)}; epochs {start + 1}..{args.epochs}")

    keys = sorted(params)
    rng = np.random.default_rng(args.seed + start)  # same order on every rank
    t0 = time.time()
    for epoch in range(start + 1, args.epochs + 1):
        order = rng.permutation(len(ytr))
        losses = []
        for batch in np.array_split(order, max(1, len(ytr) // args.batch)):
            mine = np.array_split(batch, size)[rank]
            loss, grads = gradients(params, xtr[mine], ytr[mine])
            # One Allreduce per step: every gradient and the loss in one buffer, each
            # weighted by this rank's share of the batch.
            share = len(mine) / len(batch)
            flat = np.concatenate([grads[k].ravel() for k in keys] + [np.array([loss])]) * share
            total = np.empty_like(flat)
            comm.Allreduce(flat, total, op=MPI.SUM)
            at = 0
            for k in keys:
                n = params[k].size
                params[k] -= args.lr * total[at : at + n].reshape(params[k].shape)
                at += n
            losses.append(total[-1])
        if rank == 0:
            end_of_epoch(params, epoch, args.epochs, losses, xte, yte, ckpt)
        time.sleep(args.sleep)
    print(f"rank {rank} params {digest(params)}", flush=True)
    if rank == 0:
        finish(params, xte, yte, out_dir, ckpt, epochs=args.epochs, ranks=size, seconds=time.time() - t0)

if __name__ == "__main__":
    main()
