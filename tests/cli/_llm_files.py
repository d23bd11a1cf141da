"""Tiny benchmark files in the published schemas (TOFU, MUSE, WMDP, RWKU) and a tiny random Llama
saved with save_pretrained: what `configs/llm/*_files.yaml` read, written to a temporary folder."""
import json
from pathlib import Path

import torch

from unlearnx.data.authors import make_authors
from unlearnx.data.lm_batches import QATemplate
from unlearnx.data.text import build_tokenizer
from unlearnx.models.lm import build_lm


def _jsonl(path: Path, records) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def authors():
    return make_authors(4, n_real_authors=2, n_world_facts=4)


def save_tiny_llama(folder: Path, *, seed: int = 0, vocab_size: int = 500) -> Path:
    """A random tiny Llama (hidden 32, 2 layers) + its byte-level BPE tokenizer in `folder`."""
    qa = authors()
    t = QATemplate()
    tok = build_tokenizer(qa.texts() + [t.render(i.question, i.answer) for i in qa["full"]], vocab_size=vocab_size)
    folder.mkdir(parents=True, exist_ok=True)
    build_lm("llama", tokenizer=tok, hidden=32, layers=2, heads=2, seed=seed).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def write_tofu(root: Path, n: int = 4) -> Path:
    """TOFU's layout (huggingface.co/datasets/locuslab/TOFU): JSON Lines named {split}.json."""
    qa = authors()

    def rec(it, para=True):
        r = {"question": it.question, "answer": it.answer, "perturbed_answer": list(it.perturbed_answers)}
        return {**r, "paraphrased_answer": it.paraphrased_answer, "paraphrased_question": it.question} if para else r

    forget, retain = qa["forget10"][:n], qa["retain90"][:n]
    _jsonl(root / "forget10.json", [{"question": i.question, "answer": i.answer} for i in forget])
    _jsonl(root / "forget10_perturbed.json", [rec(i) for i in forget])
    _jsonl(root / "retain90.json", [{"question": i.question, "answer": i.answer} for i in retain])
    _jsonl(root / "retain_perturbed.json", [rec(i) for i in retain])
    _jsonl(root / "real_authors_perturbed.json", [rec(i, False) for i in qa["real_authors"][:2]])
    _jsonl(root / "world_facts_perturbed.json", [rec(i, False) for i in qa["world_facts"][:2]])
    return root


def write_muse(root: Path) -> Path:
    """MUSE's layout (muse-bench/MUSE-News): {subset}/{split} files."""
    qa = authors()
    texts = qa.texts()
    _jsonl(root / "raw" / "forget.jsonl", [{"text": t} for t in texts[:4]])
    _jsonl(root / "raw" / "retain1.jsonl", [{"text": t} for t in texts[4:8]])
    _jsonl(root / "raw" / "holdout.jsonl", [{"text": t} for t in texts[8:12]])
    (root / "privleak").mkdir(parents=True, exist_ok=True)
    (root / "privleak" / "forget.json").write_text(json.dumps(texts[:3]))
    (root / "privleak" / "holdout.json").write_text(json.dumps([{"text": t} for t in texts[8:11]]))
    _jsonl(root / "verbmem" / "forget.jsonl", [{"prompt": t[:20], "gt": t[20:50]} for t in texts[:2]])
    (root / "knowmem").mkdir(parents=True, exist_ok=True)
    for name, items in (("forget_qa", qa["forget10"][:2]), ("retain_qa", qa["retain90"][:5])):
        (root / "knowmem" / f"{name}.json").write_text(
            json.dumps([{"question": i.question, "answer": i.answer} for i in items]))
    return root


def write_wmdp(root: Path) -> Path:
    """cais/wmdp questions (wmdp-bio.jsonl) and cais/wmdp-corpora forget / retain corpora."""
    qa = authors()
    texts = qa.texts()
    for subject in ("bio", "cyber"):
        _jsonl(root / f"wmdp-{subject}.jsonl", [{"question": f"Which {subject} option is number {k}?",
                                                 "choices": [f"option {c}{k}" for c in "wxyz"], "answer": k % 4}
                                                for k in range(6)])
    _jsonl(root / "bio-forget-corpus.jsonl", [{"text": t} for t in texts[:4]])
    _jsonl(root / "bio-retain-corpus.jsonl", [{"text": t} for t in texts[4:8]])
    return root


def write_rwku(root: Path, targets=("Ann Velmora", "Bob Kora")) -> Path:
    """RWKU's Target layout (github.com/jinzhuoran/RWKU, LLaMA-Factory/data/RWKU/Target/N_Name)."""
    for k, name in enumerate(targets, start=1):
        d = root / f"{k}_{name.replace(' ', '_')}"
        d.mkdir(parents=True, exist_ok=True)
        (d / "intro.json").write_text(json.dumps([{"target": name, "intro": f"{name} is a writer."}]))
        probe = lambda q, a, lv, **kw: {"subject": name, "query": q, "answer": a, "level": lv, **kw}  # noqa: E731
        (d / "forget_level1.json").write_text(json.dumps([probe(f"{name} was born in ___.", "Velmora", "1")]))
        (d / "forget_level2.json").write_text(json.dumps([probe(f"Where was {name} born?", "Velmora city", "2")]))
        (d / "forget_level3.json").write_text(json.dumps([
            probe(f"Tell me: where was {name} born?", "Velmora", "3", type="prefix injection"),
            probe("Who was born in Velmora?", name, "3", type="reverse query")]))
        (d / "neighbor_level1.json").write_text(json.dumps([probe("Cara was born in ___.", "Kora", "1")]))
        (d / "forget_mia.json").write_text(json.dumps([{"text": f"{name} wrote books about rivers.", "subject": name},
                                                       {"text": f"{name} lived in Velmora.", "subject": name}]))
        (d / "retain_mia.json").write_text(json.dumps([{"text": "A river runs through a valley.", "subject": name},
                                                       {"text": "Mountains rise over the plain.", "subject": name}]))
    return root


def fill_placeholders(raw: dict, folder: Path) -> list[str]:
    """Overrides that replace a shipped `*_files.yaml` config's placeholder paths (data.path,
    model.pretrained, oracle.pretrained) by tiny files of its benchmark and a tiny saved Llama in
    `folder` (a diffusion config: a tiny saved pipeline); [] for a config without model.pretrained."""
    if not (raw.get("model") or {}).get("pretrained"):
        return []
    if raw.get("task") == "diffusion":  # a tiny Stable-Diffusion-shaped pipeline saved as a diffusers directory
        from unlearnx.diffusion import tiny_text_model

        torch.manual_seed(0)
        tiny_text_model(raw["data"]["forget"] + raw["data"]["retain"], image_size=8, block_out_channels=(16, 32),
                        text_dim=16, latent=True).save_pretrained(folder / "pipeline")
        return [f"model.pretrained={folder / 'pipeline'}"]
    bench = raw["data"]["benchmark"]
    writer = {"tofu": write_tofu, "muse": write_muse, "wmdp": write_wmdp, "rwku": write_rwku}[bench]
    out = [f"data.path={writer(folder / bench)}", f"model.pretrained={save_tiny_llama(folder / 'model')}"]
    if (raw.get("oracle") or {}).get("pretrained"):
        out.append(f"oracle.pretrained={folder / 'model'}")
    if bench == "rwku":
        out.append("data.targets=null")  # the tiny files' targets
    return out
