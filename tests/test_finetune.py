"""vit.finetune: freezing and LoRA (through peft) from a pretrained backbone, in train.py runs: what trains,
what stays as loaded, and merged LoRA weights that load without peft and give the adapted model's logits."""

import sys

import pytest
import torch

import vit
from vit import finetune
from vit import train

from test_train import FAST, ckpt, train_fails


def backbone_run(trained_run, tmp_path, *flags):
    """One epoch on digits from the trained run's weights with `flags`; returns (loaded weights, last.ckpt)."""
    source = trained_run.out / "best.safetensors"
    out = tmp_path / "ft"
    assert train.main([*FAST, "--epochs", "1", "--pretrained", str(source), "--output", str(out), *flags]) == 0
    loaded = vit.create_model("vit_nano_patch2_8", pretrained=source).state_dict()
    return loaded, ckpt(out), out


def test_lora_trains_the_adapters_and_head_alone_and_merges_back(trained_run, tmp_path, monkeypatch):
    rank = 4
    loaded, last, out = backbone_run(trained_run, tmp_path, "--lora-rank", str(rank), "--lora-alpha", "8")
    state = last["model"]
    # The adapted linears of 6 blocks: qkv (64 -> 192), proj (64 -> 64), fc1 (64 -> 256), fc2 (256 -> 64);
    # an adapter of rank r on (in -> out) holds r * (in + out) numbers. The head: 64 x 10 + 10.
    C, depth, classes = 64, 6, 10
    adapters = depth * rank * ((C + 3 * C) + (C + C) + (C + 4 * C) + (4 * C + C))
    trained = {k for k in state if "lora_" in k} | {"head.weight", "head.bias"}
    assert sum(state[k].numel() for k in trained) == adapters + C * classes + classes
    optimizer_tensors = sum(len(g["params"]) for g in last["optimizer"]["param_groups"])
    assert optimizer_tensors == len(trained) == depth * 4 * 2 + 2
    for key, value in state.items():  # every other weight is the backbone's as loaded
        if key not in trained:
            assert torch.equal(value, loaded[key.replace(".base_layer", "")]), key

    model = vit.create_model("vit_nano_patch2_8", num_classes=classes)
    finetune.add_lora(model, rank, 8)
    model.load_state_dict(state)
    assert finetune.trainable_parameters(model) == adapters + C * classes + classes
    assert any(state[k].any() for k in state if "lora_B" in k)  # the adapters moved from their zero start
    monkeypatch.setitem(sys.modules, "peft", None)  # best.safetensors loads without peft
    merged = vit.create_model(pretrained=out / "best.safetensors").eval()
    assert not any("lora" in k or "base_layer" in k for k in merged.state_dict())
    x = torch.randn(8, 1, 8, 8)
    with torch.no_grad():
        assert (merged(x) - model.eval()(x)).abs().max() <= 1e-5


def test_merge_equals_peft_merge_and_unload():
    """Our merge against peft's own (get_peft_model(...).merge_and_unload()) on the same adapters."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = finetune.add_lora(vit.create_model("vit_nano_patch2_8", depth=2), rank=2, alpha=6)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    ours = finetune.merge_lora(model).state_dict()
    plain = vit.create_model("vit_nano_patch2_8", depth=2)
    plain.load_state_dict({k.replace(".base_layer", ""): v for k, v in model.state_dict().items() if "lora_" not in k})
    reference = get_peft_model(plain, LoraConfig(r=2, lora_alpha=6, target_modules=finetune.LORA_TARGETS))
    reference.load_state_dict({f"base_model.model.{k}": v for k, v in model.state_dict().items()}, strict=True)
    theirs = reference.merge_and_unload().state_dict()
    assert ours.keys() == theirs.keys()
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=1e-7, msg=key)


@pytest.mark.parametrize("spec, frozen", [("backbone", lambda k: not k.startswith("head.")),
                                          ("2", lambda k: k.startswith(("cls_token", "pos_embed", "patch_embed",
                                                                        "blocks.0.", "blocks.1.")))])
def test_freeze_keeps_the_frozen_part_as_loaded(trained_run, tmp_path, spec, frozen):
    loaded, last, _ = backbone_run(trained_run, tmp_path, "--freeze", spec)
    for key, value in last["model"].items():
        assert torch.equal(value, loaded[key]) == frozen(key), key


@pytest.mark.parametrize("how", ["backbone", "1", "lora"])
def test_a_frozen_conv_stem_keeps_its_batchnorm_statistics(how):
    """--freeze and LoRA freeze the embeddings, a conv stem's too: in training it normalises with the statistics
    it was loaded with and leaves them as they are, while an unfrozen stem updates them."""
    model = vit.create_model("vit_nano_patch4_32", stem="conv", depth=2)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        model.train()(x)  # unfrozen: the statistics move
    before = {k: v.clone() for k, v in model.state_dict().items() if ".bn." in k}
    assert before["patch_embed.backbone.0.bn.running_mean"].any()
    if how == "lora":
        finetune.add_lora(model, rank=2)
    else:
        finetune.freeze(model, how)
    model.train()
    model(x).sum().backward()
    assert not model.patch_embed.backbone.training
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())


def test_finetuning_flags_that_do_not_fit(capsys):
    assert "--lora-rank with --freeze" in train_fails(capsys, "--lora-rank", "4", "--freeze", "backbone")
    assert "--lora-alpha needs --lora-rank" in train_fails(capsys, "--lora-alpha", "16")
    assert "--freeze 'x'" in train_fails(capsys, "--freeze", "x")
    assert "a block count from 1 to 6" in train_fails(capsys, "--freeze", "7")


def test_freeze_states_one_rule_in_one_wording(capsys):
    """A value that is never right (read with the flags) and a count past the model's depth (found when it is
    built) are told the same rule."""
    rule = "give 'backbone' (the head alone trains) or a block count from 1 to {} (the embeddings and that many " \
           "blocks stay frozen)"
    assert rule.format("the model's depth") in train_fails(capsys, "--freeze", "head")
    assert rule.format(6) in train_fails(capsys, "--freeze", "7")


def test_a_lora_rank_past_the_layer_widths_is_refused_before_any_adapter_is_made(capsys):
    """--lora-rank 1000000 would have peft allocate (in + out) x 10^6 values per layer (4.7 GB on the digits
    model) before anything said no: the rank is checked against the widths it adapts first. --freeze takes ASCII
    digits only ("²" passes str.isdigit, then fails in int)."""
    model = vit.create_model("vit_nano_patch2_8", depth=1)
    assert finetune.lora_rank_limit(model) == 64
    with pytest.raises(vit.ConfigError, match="--lora-rank 1000000 is more than the layers it adapts can use: .*here "
                                              "64 \\(embed_dim 64\\)"):
        finetune.add_lora(model, 10**6)
    assert "--lora-rank 1000000 is more than" in train_fails(capsys, "--lora-rank", "1000000")
    assert "--freeze '²'" in train_fails(capsys, "--freeze", "²")
    with pytest.raises(vit.ConfigError, match="--freeze '²'"):
        finetune.freeze(model, "²")
