import json

import pytest
import torch

import whetstone as ws
from whetstone.data.datasets import load_dataset
from whetstone.training.checkpoint import CHECKPOINT_NAME, HISTORY_NAME, PLOT_NAME, save_checkpoint


@pytest.fixture(scope="module")
def mini():
    train, test = load_dataset("mnist-mini", "train"), load_dataset("mnist-mini", "test")
    return (ws.TensorLoader(train.images[:1024], train.labels[:1024], 128, shuffle=True, seed=0),
            ws.TensorLoader(test.images[:500], test.labels[:500], 250))  # fmt: skip


def small_model():
    torch.manual_seed(0)
    return ws.create_model("mnist-dense")


def test_trainer_sharpens_to_fully_binary_and_writes_artifacts(tmp_path, mini):
    train_loader, test_loader = mini
    model = small_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    seen = []
    trainer = ws.Trainer(model, optimizer, ws.SimpleSharpener(3, steps=1), out_dir=tmp_path,
                         run_info={"model": "mnist-dense", "model_options": {}}, callbacks=[seen.append],
                         progress=False)  # fmt: skip
    result = trainer.fit(train_loader, epochs=10, eval_loader=test_loader)
    assert result.fully_binary
    assert len(result.history) == 6 == len(seen)  # epochs 0-2 plain, 3 steps, stops when done
    assert [r.sharpness for r in result.history][-3:] == [[1, 0, 0], [1, 1, 0], [1, 1, 1]]
    assert all(layer.binary for layer in result.layers)
    assert result.history[-1].eval_accuracy > 0.4  # 1,024 samples, 3 fast steps; chance is 0.1
    for name in (CHECKPOINT_NAME, HISTORY_NAME, PLOT_NAME):
        assert (tmp_path / name).stat().st_size > 0
    history = json.loads((tmp_path / HISTORY_NAME).read_text())
    assert history[-1]["sharpness"] == [1.0, 1.0, 1.0] and len(history) == 6


def test_checkpoint_round_trip_reproduces_predictions(tmp_path, mini):
    train_loader, test_loader = mini
    model = small_model()
    trainer = ws.Trainer(model, torch.optim.Adam(model.parameters(), 1e-3), ws.SimpleSharpener(0, steps=1),
                         out_dir=tmp_path, progress=False)  # fmt: skip
    trainer.fit(train_loader, epochs=3)
    checkpoint = ws.load_checkpoint(tmp_path)
    assert checkpoint["position"] == [3, 0] and checkpoint["sharpener"]["step"] == 3
    restored = small_model()
    restored.load_state_dict(checkpoint["model"])
    assert ws.model_sharpness(restored) == [1.0, 1.0, 1.0]
    x, _ = next(iter(test_loader))
    assert torch.equal(restored.eval()(x), model.eval()(x))


def test_truncated_checkpoint_is_a_clear_error(tmp_path, mini):
    path = tmp_path / "checkpoint.pt"
    model = small_model()
    save_checkpoint(path, model=model.state_dict())
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(ValueError, match="cannot load checkpoint"):
        ws.load_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        ws.load_checkpoint(tmp_path / "missing.pt")


class Payload:
    pass


def test_checkpoint_refuses_arbitrary_objects(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": Payload()}, path)
    with pytest.raises(ValueError, match="cannot load checkpoint"):
        ws.load_checkpoint(path)


def test_binary_report_detects_continuous_outputs(mini):
    _, test_loader = mini
    model = small_model()
    ws.set_model_sharpness(model, 0.5)  # layers 1 binary, 2 half, 3 continuous
    report = ws.binary_report(model, test_loader)
    assert [layer.binary for layer in report] == [True, False, False]
    assert [layer.units for layer in report] == [256, 64, 100]
    assert 0 <= report[0].firing_rate <= 1


def test_trainer_without_sharpener_is_not_fully_binary(mini):
    train_loader, _ = mini
    model = small_model()
    result = ws.Trainer(model, torch.optim.Adam(model.parameters()), progress=False).fit(train_loader, 1)
    assert not result.fully_binary and result.checkpoint is None


def test_trainer_errors(tmp_path, mini):
    model = small_model()
    with pytest.raises(ValueError, match="epochs must be a positive integer"):
        ws.Trainer(model, torch.optim.Adam(model.parameters()), progress=False).fit(mini[0], 0)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="is not writable"):
        ws.Trainer(model, torch.optim.Adam(model.parameters()), out_dir=blocker / "run")


def test_non_finite_loss_stops_with_clear_error(mini):
    model = small_model()
    with torch.no_grad():
        model.features[1].weight.fill_(float("nan"))
    trainer = ws.Trainer(model, torch.optim.Adam(model.parameters()), progress=False)
    with pytest.raises(FloatingPointError, match="training loss became nan at epoch 0, batch 0"):
        trainer.fit(mini[0], 1)


def test_per_batch_sharpening_that_finishes_mid_epoch_ends_the_run(mini):
    model = small_model()
    sharpener = ws.SimpleSharpener(0, steps=2, per="batch")  # all layers binary after a few batches
    trainer = ws.Trainer(model, torch.optim.Adam(model.parameters()), sharpener, progress=False)
    result = trainer.fit(mini[0], 3, mini[1])
    assert sharpener.done and result.fully_binary and len(result.history) == 1


def test_evaluation_runs_in_full_float32():
    from whetstone.training.evaluation import binary_report, evaluate

    model = small_model()

    seen = []

    def hook(module, inputs, output):
        seen.append((torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32, output.requires_grad))

    model.features[1].register_forward_hook(hook)
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True  # what a GPU run may set
    try:
        loader = [(torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,)))]
        evaluate(model, loader)
        binary_report(model, loader)
        assert seen == [(False, False, False)] * 2  # TF32 off (and no autograd graph) while evaluating
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32  # restored after
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def test_surrogate_gradients_train_the_binary_network_for_the_whole_budget(mini):
    train_loader, test_loader = mini
    lengths = {}
    for surrogate in (None, 0.0):
        model = small_model()
        ws.set_model_surrogate(model, surrogate)
        trainer = ws.Trainer(
            model, torch.optim.Adam(model.parameters(), lr=2e-3), ws.SimpleSharpener(1, steps=1), progress=False
        )
        assert trainer.fit(train_loader, epochs=4).history[-1].sharpness == [1, 1, 1]  # binary after epoch 4
        weights = [p.detach().clone() for p in model.parameters()]
        result = trainer.fit(train_loader, epochs=6, eval_loader=test_loader)
        assert result.fully_binary
        lengths[surrogate] = len(result.history)
        changed = [not torch.equal(before, after) for before, after in zip(weights, model.parameters())]
        assert all(changed) if surrogate is not None else not any(changed)
    assert lengths == {None: 4, 0.0: 6}  # the paper's method stops once binary; with surrogates all epochs run


def test_distillation_loss_is_the_tempered_kl_divergence():
    from whetstone.nn.losses import distillation_loss

    torch.manual_seed(0)
    student, teacher = torch.randn(6, 10, requires_grad=True), torch.randn(6, 10)
    for temperature in (1.0, 4.0):
        p_teacher = torch.softmax(teacher / temperature, -1)
        expected = (p_teacher * (p_teacher.log() - torch.log_softmax(student / temperature, -1))).sum(
            -1
        ).mean() * temperature**2
        assert torch.allclose(distillation_loss(student, teacher, temperature), expected)
    assert distillation_loss(teacher, teacher).abs() < 1e-6  # the teacher's own logits: nothing to learn
    distillation_loss(student, teacher).backward()
    assert student.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"teacher's logits have shape \(6, 3\), the student's \(6, 10\)"):
        distillation_loss(student, teacher[:, :3])


class ConstantTeacher(torch.nn.Module):
    """Says class 0 with certainty, whatever the image."""

    def forward(self, x):
        logits = torch.full((len(x), 10), -20.0)
        logits[:, 0] = 20.0
        return logits


def test_a_teacher_pulls_the_student_toward_its_predictions(mini):
    train_loader, test_loader = mini

    def predicted_zeros(loss=None):
        model = small_model()
        trainer = ws.Trainer(model, torch.optim.Adam(model.parameters(), lr=2e-3), loss=loss, progress=False)
        trainer.fit(train_loader, epochs=2)
        with torch.no_grad():
            return float(torch.cat([model.eval()(x).argmax(-1) == 0 for x, _ in test_loader]).float().mean())

    assert predicted_zeros() < 0.3  # the labels alone: about a tenth are zeros
    assert predicted_zeros(ws.Distillation(ConstantTeacher(), weight=1.0)) > 0.95  # the teacher alone: all zeros
    # Weight 0 ignores the teacher: the very same training as without one.
    assert predicted_zeros(ws.Distillation(ConstantTeacher(), weight=0.0)) == predicted_zeros()


def test_a_teacher_is_frozen_and_errors_name_the_argument():
    teacher = small_model().train()
    loss = ws.Distillation(teacher)
    assert not loss.teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert loss.for_evaluation() is loss.base  # held-out data is scored without the teacher
    with pytest.raises(ValueError, match=r"distill_weight must be in \[0, 1\], got 1.5"):
        ws.Distillation(teacher, weight=1.5)
    with pytest.raises(ValueError, match="distill_temperature must be a positive finite number, got 0"):
        ws.Distillation(teacher, temperature=0)
    with pytest.raises(ValueError, match="base loss must classify"):
        ws.Distillation(teacher, base=ws.Reconstruction())


def test_training_from_python_logs_each_epoch_and_is_silent_when_asked(mini, capsys, monkeypatch):
    """Each epoch's line goes through logging (the command line's line): printed on stderr while nothing is
    configured, routed by the caller's own handlers otherwise, silenced by the logger's level."""
    import logging

    def fit(epochs: int) -> None:
        model = ws.create_model("mnist-dense")
        optimizer = torch.optim.Adadelta(model.parameters(), 4.0)
        ws.Trainer(model, optimizer, progress=False).fit(mini[0], epochs)

    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])  # as in a plain script: logging not configured (pytest adds its own)
    fit(2)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split()[:2] for line in lines] == [["epoch", "1"], ["epoch", "2"]] and "sharpness [0.00" in lines[0]
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    monkeypatch.setattr(root, "handlers", [handler])  # the caller's own logging: it gets the lines, stderr none
    fit(1)
    assert [r.name for r in records] == ["whetstone.training"] and not capsys.readouterr().err
    logger, level = logging.getLogger("whetstone"), logging.getLogger("whetstone").level
    monkeypatch.setattr(root, "handlers", [])
    logger.setLevel(logging.WARNING)  # asked to be silent
    try:
        fit(1)
    finally:
        logger.setLevel(level)
    assert not capsys.readouterr().err


def conv_bn_dropout():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Dropout(0.5),
                               ws.SpikingBReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 26 * 26, 10))  # fmt: skip


def test_reestimated_batchnorm_statistics_are_the_plain_average_over_the_batches(mini):
    train_loader, _ = mini
    model = conv_bn_dropout().train()
    norm = model[1]
    norm.momentum = 0.3
    batches = [x for _, (x, _) in zip(range(3), train_loader, strict=False)]
    torch.manual_seed(5)
    assert ws.reestimate_batchnorm(model, batches + batches, max_batches=3) == 1
    after = torch.rand(4)  # torch's RNG is where it was
    torch.manual_seed(5)
    assert torch.equal(after, torch.rand(4))
    with torch.no_grad():
        outputs = [model[0](x) for x in batches]
    means = torch.stack([y.mean((0, 2, 3)) for y in outputs])
    variances = torch.stack([y.var((0, 2, 3)) for y in outputs])  # unbiased, as batch norm keeps it
    torch.testing.assert_close(norm.running_mean, means.mean(0))
    torch.testing.assert_close(norm.running_var, variances.mean(0))
    assert norm.momentum == 0.3 and model.training and norm.num_batches_tracked == 3
    # The dropout after the batch norm ran in eval mode: a second estimate on the same batches is identical.
    first = norm.running_var.clone()
    ws.reestimate_batchnorm(model, [(x, None) for x in batches])
    assert torch.equal(norm.running_var, first)


def test_reestimating_batchnorm_errors_and_models_without_one(mini):
    assert ws.reestimate_batchnorm(small_model(), []) == 0  # nothing to estimate: the batches are not read
    model = conv_bn_dropout()
    model[1].running_mean.fill_(0.25)
    with pytest.raises(ValueError, match="batches yielded nothing"):
        ws.reestimate_batchnorm(model, [])
    assert torch.equal(model[1].running_mean, torch.full((4,), 0.25))  # kept as they were
    with pytest.raises(ValueError, match="max_batches must be a positive integer, got 0"):
        ws.reestimate_batchnorm(conv_bn_dropout(), [torch.zeros(2, 1, 28, 28)], max_batches=0)
    with pytest.raises(ValueError, match="batchnorm_batches"):
        ws.Trainer(small_model(), torch.optim.SGD(small_model().parameters(), 0.1), batchnorm_batches=-1)


def test_binary_epochs_end_with_reestimated_batchnorm_and_train_as_before(mini):
    train, _ = mini
    augmented = ws.TensorLoader(train.images, train.labels, 128, shuffle=True, seed=0,
                                transform=ws.data.loader.random_crop_flip(2))  # draws from torch's RNG  # fmt: skip

    def fit(loader: ws.TensorLoader, batchnorm_batches: int) -> torch.nn.Module:
        model = conv_bn_dropout()
        ws.set_model_surrogate(model, 0.0)  # the binary second epoch trains, after the first epoch's estimate
        trainer = ws.Trainer(model, torch.optim.Adam(model.parameters(), 1e-3), ws.SimpleSharpener(0, steps=1),
                             progress=False, batchnorm_batches=batchnorm_batches)  # fmt: skip
        trainer.fit(loader, epochs=2)
        return model

    estimated, averaged = fit(augmented, 4), fit(augmented, 0)
    for name, value in averaged.state_dict().items():  # the same training: weights equal, statistics not
        if "running" not in name and "num_batches" not in name:
            assert torch.equal(estimated.state_dict()[name], value), name
    assert not torch.allclose(estimated[1].running_var, averaged[1].running_var)
    # The statistics kept are those of the final network over the first 4 training batches.
    fixed = ws.TensorLoader(train.images, train.labels, 128)
    model = fit(fixed, 4)
    kept = model[1].running_mean.clone(), model[1].running_var.clone()
    ws.reestimate_batchnorm(model, fixed, max_batches=4)
    assert torch.equal(model[1].running_mean, kept[0]) and torch.equal(model[1].running_var, kept[1])
