"""How ``keras-implicit table1`` trains: the recipes, the optimizer, each epoch's data.

``quick`` (default): Adam, learning rate 1e-3, no schedule, no augmentation,
1 epoch: short CPU budgets already give low errors.

``paper``: the setup of the paper's reference implementation,
torchdiffeq's ``examples/odenet_mnist.py`` (Chen et al. 2018): SGD with
momentum 0.9; learning rate 0.1 for batch 128, scaled by ``batch / 128``;
divided by 10 at epochs 60, 100 and 140 (absolute epochs: the schedule
follows the optimizer's step counter, which a resumed run restores); 160
epochs; random 28x28 crops of the images zero-padded by 4 pixels; pixels in
[0, 1], no normalisation, no weight decay; batches without a remainder
(``drop_last``). The models are ``ki.applications.odenet_mnist``'s, the
ODE-Net solved by dopri5 at tolerance 1e-3 with the adjoint, the RK-Net by
RK4 with backprop.

Every part is a flag (``--optimizer``, ``--learning-rate``, ``--momentum``,
``--lr-decay-epochs``, ``--augment``, ``--epochs``) whose default comes from
the recipe.

Each epoch's data is a function of ``(seed, epoch)`` alone: a permutation of
the training set and, with augmentation, one crop offset per image, both
drawn from ``numpy.random.default_rng([seed, epoch])``. A run resumed at
epoch k therefore sees the data an uninterrupted run sees at epoch k.
"""

RECIPES = {
    "quick": {"epochs": 1, "optimizer": "adam", "learning_rate_per_128": None,
              "momentum": None, "lr_decay_epochs": [], "augment": False},
    "paper": {"epochs": 160, "optimizer": "sgd", "learning_rate_per_128": 0.1,
              "momentum": 0.9, "lr_decay_epochs": [60, 100, 140], "augment": True},
}
ADAM_LEARNING_RATE = 1e-3
SGD_LEARNING_RATE_PER_128 = 0.1
SGD_MOMENTUM = 0.9
LR_DECAY_FACTOR = 0.1
CROP_PADDING = 4
SOURCE = "torchdiffeq examples/odenet_mnist.py (Chen et al. 2018)"


def resolve(recipe, optimizer=None, learning_rate=None, momentum=None, lr_decay_epochs=None,
            augment=None, epochs=None, batch_size=128):
    """The training settings: the recipe's defaults, overridden by the flags that were given.

    Returns:
        ``(settings, epochs)``: a dict with ``optimizer``, ``learning_rate``,
        ``momentum`` (``None`` for Adam), ``lr_decay_epochs``,
        ``lr_decay_factor`` and ``augment``; and the number of epochs.

    Raises:
        ValueError: ``--momentum`` with Adam, or an unknown recipe / optimizer.
    """
    if recipe not in RECIPES:
        raise ValueError(f"Unknown recipe. Valid recipes: {sorted(RECIPES)}. "
                         f"Received: --recipe={recipe!r}")
    defaults = RECIPES[recipe]
    optimizer = optimizer or defaults["optimizer"]
    if optimizer not in ("adam", "sgd"):
        raise ValueError(f"Unknown optimizer. Valid optimizers: ['adam', 'sgd']. "
                         f"Received: --optimizer={optimizer!r}")
    if optimizer == "adam":
        if momentum is not None:
            raise ValueError(f"--momentum applies to --optimizer=sgd only. Received: "
                             f"--momentum={momentum}, --optimizer='adam'")
        default_rate = ADAM_LEARNING_RATE
    else:
        momentum = SGD_MOMENTUM if momentum is None else momentum
        default_rate = SGD_LEARNING_RATE_PER_128 * batch_size / 128
    settings = {
        "optimizer": optimizer,
        "learning_rate": default_rate if learning_rate is None else learning_rate,
        "momentum": momentum,
        "lr_decay_epochs": sorted(defaults["lr_decay_epochs"] if lr_decay_epochs is None
                                  else lr_decay_epochs),
        "lr_decay_factor": LR_DECAY_FACTOR,
        "augment": defaults["augment"] if augment is None else bool(augment),
    }
    return settings, defaults["epochs"] if epochs is None else epochs


def learning_rate(settings, steps_per_epoch):
    """The learning rate, or a Keras schedule stepping at ``settings["lr_decay_epochs"]``.

    The boundaries are absolute optimizer steps (``epoch * steps_per_epoch``),
    so they hold across resumed runs, which restore the step counter.
    """
    import keras

    rate = settings["learning_rate"]
    epochs = settings["lr_decay_epochs"]
    if not epochs:
        return rate
    # Keras' boundaries are inclusive (values[0] while step <= boundaries[0]) and the
    # optimizer passes the number of steps done, so epoch e's first step (step e * n)
    # must be the first one past the boundary.
    boundaries = [int(epoch * steps_per_epoch) - 1 for epoch in epochs]
    values = [rate * settings["lr_decay_factor"] ** i for i in range(len(epochs) + 1)]
    return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)


def build_optimizer(settings, steps_per_epoch):
    """The Keras optimizer of the settings (see :func:`resolve`)."""
    import keras

    rate = learning_rate(settings, steps_per_epoch)
    if settings["optimizer"] == "sgd":
        return keras.optimizers.SGD(rate, momentum=settings["momentum"])
    return keras.optimizers.Adam(rate)


def describe(settings):
    """One line: ``SGD (momentum 0.9), lr 0.1, /10 at epochs 60, 100, 140; random crops``."""
    name = (f"SGD (momentum {settings['momentum']:g})" if settings["optimizer"] == "sgd"
            else "Adam")
    text = f"{name}, lr {settings['learning_rate']:g}"
    if settings["lr_decay_epochs"]:
        factor = 1 / settings["lr_decay_factor"]
        text += (f", /{factor:g} at epochs "
                 f"{', '.join(str(e) for e in settings['lr_decay_epochs'])}")
    text += ("; random 28x28 crops of 4-pixel-padded images" if settings["augment"]
             else "; no augmentation")
    return text


def random_crops(images, offsets, padding=CROP_PADDING):
    """Crops of ``images`` (n, H, W, C) zero-padded by ``padding``, at ``offsets`` (n, 2).

    ``offsets[i] = (dy, dx)`` in ``[0, 2 * padding]``: image ``i`` moves by
    ``(padding - dy, padding - dx)`` pixels, the uncovered border is 0.
    """
    import numpy as np

    n, height, width = images.shape[:3]
    padded = np.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    rows = offsets[:, 0, None] + np.arange(height)[None, :]  # (n, H)
    cols = offsets[:, 1, None] + np.arange(width)[None, :]  # (n, W)
    return padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


def epoch_data(x, y, seed, epoch, batch_size, augment):
    """The training data of one epoch: seeded order, augmentation, full batches only.

    Args:
        x, y: the training set, ``(n, 28, 28, 1)`` float32 and ``(n,)``.
        seed, epoch: the data are a function of these alone.
        batch_size: the last ``n % batch_size`` images of the permutation are
            left out (as torchdiffeq's ``drop_last=True``); another epoch's
            permutation includes them.
        augment: random crops (see :func:`random_crops`).

    Returns:
        ``(x_epoch, y_epoch)`` with ``(n // batch_size) * batch_size`` rows.
    """
    import numpy as np

    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(x))[:(len(x) // batch_size) * batch_size]
    x_epoch, y_epoch = x[order], y[order]
    if augment:
        offsets = rng.integers(0, 2 * CROP_PADDING + 1, size=(len(order), 2))
        x_epoch = random_crops(x_epoch, offsets)
    return x_epoch, y_epoch
