"""Horovod's Keras MNIST example, as the original aic tutorial ran it (`aicrun keras_mnist.py`).

    aic run examples/keras-horovod --entrypoint train.py --launcher horovod --miners 2 --gpus 2 \
        --data mnist --env HOROVOD_WITH_TENSORFLOW=1 --env HOROVOD_WITHOUT_PYTORCH=1 -- --epochs 3

Every rank trains on its shard of $AIC_DATA_DIR/mnist.npz (written by make_data.py): the
optimizer is wrapped in hvd.DistributedOptimizer (gradients averaged across ranks), its
learning rate scaled by the number of ranks, rank 0's initial weights broadcast to all, and
only rank 0 writes checkpoints, into $AIC_OUTPUT_DIR (model.h5 at the end: the Flask app's).
"""
import argparse
import os

import horovod.tensorflow.keras as hvd
import numpy as np
import tensorflow as tf


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.001)
    args = ap.parse_args()

    hvd.init()
    gpus = tf.config.experimental.list_physical_devices("GPU")
    for g in gpus:
        tf.config.experimental.set_memory_growth(g, True)
    if gpus:
        tf.config.experimental.set_visible_devices(gpus[hvd.local_rank() % len(gpus)], "GPU")
    tf.random.set_seed(hvd.rank())

    with np.load(os.path.join(os.environ.get("AIC_DATA_DIR", "."), "mnist.npz")) as f:
        x, y, xt, yt = f["x_train"], f["y_train"], f["x_test"], f["y_test"]
    x = x[..., None].astype("float32") / 255.0
    xt = xt[..., None].astype("float32") / 255.0
    x, y = x[hvd.rank() :: hvd.size()], y[hvd.rank() :: hvd.size()]  # this rank's shard

    model = tf.keras.Sequential(
        [
            tf.keras.layers.Conv2D(32, 3, activation="relu", input_shape=(28, 28, 1)),
            tf.keras.layers.Conv2D(64, 3, activation="relu"),
            tf.keras.layers.MaxPooling2D(),
            tf.keras.layers.Dropout(0.25),
            tf.keras.layers.Flatten(),
            tf.keras.layers.Dense(128, activation="relu"),
            tf.keras.layers.Dropout(0.5),
            tf.keras.layers.Dense(10, activation="softmax"),
        ]
    )
    opt = hvd.DistributedOptimizer(tf.keras.optimizers.legacy.Adam(args.lr * hvd.size()))
    model.compile(loss="sparse_categorical_crossentropy", optimizer=opt, metrics=["accuracy"])

    out = os.environ.get("AIC_OUTPUT_DIR", ".")
    callbacks = [
        hvd.callbacks.BroadcastGlobalVariablesCallback(0),  # every rank starts from rank 0's weights
        hvd.callbacks.MetricAverageCallback(),  # epoch metrics averaged across ranks
    ]
    if hvd.rank() == 0:  # checkpoints on rank 0 only
        callbacks.append(tf.keras.callbacks.ModelCheckpoint(os.path.join(out, "checkpoint-{epoch}.h5")))
    model.fit(x, y, batch_size=args.batch, epochs=args.epochs, callbacks=callbacks, verbose=2 if hvd.rank() == 0 else 0)

    digest = float(sum(np.abs(w).sum() for w in model.get_weights()))
    print(f"rank {hvd.rank()} of {hvd.size()} params {digest:.6f}", flush=True)
    if hvd.rank() == 0:
        loss, acc = model.evaluate(xt, yt, verbose=0)
        model.save(os.path.join(out, "model.h5"))
        print(f"final test accuracy {acc:.4f}; loss {loss:.4f}; model.h5 written", flush=True)


if __name__ == "__main__":
    main()
