"""One run of the distributed checks, launched by the tests as one process or under torchrun.

    python dist_worker.py OUT.pt [--micro N] [--only NAMES] [--fail-save]

GA's result is also saved as OUT.dcp (sharded checkpoint) and OUT.safetensors (export).
    python -m torch.distributed.run --standalone --nproc_per_node=2 dist_worker.py OUT.pt ...

Runs, on tiny models with a fixed global batch: GA, NPO (cached reference), GradDiff on a tiny
Llama (per-step losses, final parameters, per-item answer log-probs of the result), NPO with LoRA
(merged), GA again on the model wrapped in FSDP2; on a tiny Qwen2-MoE, the router statistics
(expert_attribution) and UOE(GA) (per-step losses, final parameters); on digits, a
1-epoch train_classifier of an MLP (and the same fit with the model wrapped in DDP), SalUn's
saliency and the per-sample Fisher of the result, SSD from it (final parameters, evaluation
metrics, per-item probabilities), and RL and SalUn from it (random labels; final parameters, log).
Rank 0 saves everything to OUT.pt. --fail-save: train, then rank 1 raises inside save_checkpoint (before its part is
written); the launcher must fail and OUT.ckpt must not exist.
"""
import argparse
import copy
import sys

import torch
from torch import nn
from torch.distributed.elastic.multiprocessing.errors import record

torch.set_num_threads(1)

import unlearnx as ux  # noqa: E402
from unlearnx import distributed as D  # noqa: E402


def flat_params(model):
    return torch.cat([p.detach().reshape(-1).double() for p in model.parameters()]).cpu()


def lm_setup():
    from unlearnx.data.authors import make_authors
    from unlearnx.data.lm_batches import QATemplate
    from unlearnx.data.text import build_tokenizer
    from unlearnx.models.lm import build_lm

    qa = make_authors(2, n_real_authors=0, n_world_facts=0)
    t = QATemplate()
    tok = build_tokenizer(qa.texts() + [t.render(i.question, i.answer) for i in qa["full"]], vocab_size=300)
    torch.manual_seed(0)
    model = build_lm("llama", tokenizer=tok, layers=2, hidden=32)
    items = list(qa["full"])
    # 11 forget items in batches of 5: the last global batch (1 row) leaves rank 1 without rows.
    return model, tok, items[:11], items[20:36]


def run_lm(results, only, ckpt=None):
    from unlearnx.eval.llm.scoring import encode_items, score_tokens

    model, tok, forget, retain = lm_setup()
    results["lm_init"] = flat_params(model)
    common = dict(lr=1e-3, batch_size=5, epochs=1, warmup_epochs=0, max_steps=3, progress=False, seed=0)
    for name, extra in (("ga", {}), ("npo", {"retain": None}), ("graddiff", {})):
        if only and name not in only:
            continue
        kw = {"retain": retain, **extra}
        res = ux.unlearn(copy.deepcopy(model), name, forget=forget, tokenizer=tok, **kw, **common)
        feats = encode_items(tok, forget)
        scores = score_tokens(res.model, feats, pad_token_id=tok.pad_token_id, batch_size=4)
        results[name] = {"log": {k: v for k, v in res.log.items() if isinstance(v, list)},
                         "params": flat_params(res.model),
                         "item_logp": torch.tensor([float(s.sum()) for s in scores.logp], dtype=torch.float64)}
        if name == "ga":  # the other distributed evaluations: greedy decoding and pooled hidden states
            from unlearnx.eval.llm.generation import greedy_generate
            from unlearnx.eval.llm.scoring import hidden_states

            prompts = [f"Question: {i.question}\nAnswer:" for i in forget]
            results[name]["texts"] = greedy_generate(res.model, tok, prompts, max_new_tokens=6, batch_size=4)
            results[name]["hidden"] = torch.from_numpy(hidden_states(res.model, feats, pad_token_id=tok.pad_token_id,
                                                                     batch_size=4))
        if name == "ga" and ckpt:
            D.save_checkpoint(res.model, ckpt + ".dcp")
            D.export_safetensors(res.model, ckpt + ".safetensors")
    if not only or "npo_lora" in only:
        # LoRA: only the adapters are trainable, so only their gradients are all-reduced.
        res = ux.unlearn(copy.deepcopy(model), "npo", forget=forget, tokenizer=tok, lora=True, merge_lora=True,
                         **{**common, "lr": 1e-2})
        results["npo_lora"] = {"log": {k: v for k, v in res.log.items() if isinstance(v, list)},
                               "params": flat_params(res.model)}
    if ckpt and (not only or "ga_fsdp" in only):
        # FSDP2 (fully_shard per decoder layer + root; one process: unwrapped), exported in full.
        wrapped = D.wrap_model(copy.deepcopy(model), "fsdp")
        res = ux.unlearn(wrapped, "ga", forget=forget, tokenizer=tok, inplace=True, **common)
        D.export_safetensors(res.model, ckpt + ".fsdp.safetensors")
        results["ga_fsdp"] = {"log": {k: v for k, v in res.log.items() if isinstance(v, list)}}


def run_moe(results, only):
    from unlearnx.data.lm_batches import QADataset
    from unlearnx.models.lm import build_lm
    from unlearnx.stats import expert_attribution

    _, tok, forget, retain = lm_setup()
    torch.manual_seed(0)
    model = build_lm("moe", tokenizer=tok, layers=2, hidden=32, heads=2, experts=4, top_k=2)
    if not only or "attribution" in only:
        def batches(items):  # 3 forget batches (4, 4, 3 rows): rank 0 runs two, rank 1 one
            data = QADataset(items, tok)
            return [data.collate([data[i] for i in range(s, min(len(data), s + 4))]) for s in range(0, len(data), 4)]
        att = expert_attribution(model, batches(forget), retain=batches(retain), progress=False)
        results["attribution"] = {"stats": att.stats.double(), "tokens": att.tokens.double()}
    if not only or "uoe" in only:
        res = ux.unlearn(copy.deepcopy(model), "uoe", forget=forget, tokenizer=tok, base="ga", lr=1e-2, batch_size=5,
                         epochs=1, warmup_epochs=0, max_steps=3, progress=False, seed=0)
        results["uoe"] = {"log": {k: v for k, v in res.log.items() if isinstance(v, list)},
                          "params": flat_params(res.model), "init": flat_params(model)}


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def run_classifier(results, only):
    from unlearnx.data import class_forget, digits_dataset
    from unlearnx.eval import predict
    from unlearnx.methods import train_classifier
    from unlearnx.stats import fisher_diagonal, grad_saliency
    from torch.utils.data import DataLoader

    scenario = class_forget(*digits_dataset(seed=0), classes=0)
    model = mlp()
    log = train_classifier(model, scenario.train, epochs=1, lr=0.05, batch_size=64, seed=0, progress=False)
    results["fit"] = {"log": log, "params": flat_params(model)}
    if not only or "ddp" in only:
        wrapped = D.wrap_model(mlp(), "ddp")
        log = train_classifier(wrapped, scenario.train, epochs=1, lr=0.05, batch_size=64, seed=0, progress=False)
        results["ddp"] = {"log": log, "params": flat_params(wrapped)}
    if not only or "saliency" in only:
        loader = DataLoader(scenario.forget, batch_size=32)  # 6 batches: rank 0 takes 3, rank 1 takes 3
        results["saliency"] = {
            "saliency": torch.cat([v.reshape(-1).double() for v in grad_saliency(model, loader).values()]),
            "fisher": torch.cat([v.reshape(-1).double() for v in fisher_diagonal(model, loader).values()])}
    if not only or "ssd" in only:
        res = ux.unlearn(model, "ssd", forget=scenario.forget, retain=scenario.retain, seed=0, progress=False)
        probs, _ = predict(res.model, scenario.forget, batch_size=50)
        results["ssd"] = {"params": flat_params(res.model), "probs": probs.double(),
                          "metrics": ux.evaluate(res.model, scenario=scenario)}
    for name in ("rl", "salun"):  # random labels drawn per global batch: the same under any sharding
        if not only or name in only:
            res = ux.unlearn(model, name, forget=scenario.forget, retain=scenario.retain, epochs=2, seed=0,
                             progress=False)
            results[name] = {"log": res.log, "params": flat_params(res.model), "init": flat_params(model)}


@record  # the launcher's failure summary then carries the failing rank's traceback
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--micro", type=int, default=0)
    ap.add_argument("--only", default="")
    ap.add_argument("--fail-save", action="store_true")
    args = ap.parse_args()
    only = set(filter(None, args.only.split(",")))
    ctx = D.init_distributed("cpu", micro_batch_size=args.micro)
    results = {"world_size": ctx.world_size}
    if args.fail_save:
        model, tok, forget, retain = lm_setup()
        res = ux.unlearn(model, "ga", forget=forget, tokenizer=tok, lr=1e-3, batch_size=5, max_steps=1,
                         progress=False)
        if ctx.rank == 1:
            import torch.distributed.checkpoint as dcp

            def broken(*a, **k):
                raise RuntimeError("injected failure on rank 1 while writing its checkpoint shard")
            dcp.save = broken
        D.save_checkpoint(res.model, args.out.replace(".pt", ".ckpt"))
        return
    if not only or only & {"ga", "npo", "graddiff", "ga_fsdp", "npo_lora"}:
        run_lm(results, only, args.out[:-3] if args.out.endswith(".pt") else None)
    if not only or only & {"attribution", "uoe"}:
        run_moe(results, only)
    if not only or only & {"fit", "ddp", "ssd", "saliency", "rl", "salun"}:
        run_classifier(results, only)
    if ctx.is_main:
        torch.save(results, args.out)
    D.shutdown(ctx)


if __name__ == "__main__":
    sys.exit(main())
