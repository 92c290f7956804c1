"""`growlength export` writes a folder that plain transformers loads and generates from."""

import json
import subprocess
import sys

import pytest
import torch
from conftest import CHILD_ENV, tiny_config
from transformers import AutoConfig

from growlength.checkpoint import model_from_checkpoint, resolve_checkpoint
from growlength.cli import main
from growlength.train import train

# Run in a fresh interpreter: transformers alone, and a check that growlength never got imported.
LOAD_AND_GENERATE = """
import json, sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
folder = sys.argv[1]
model = AutoModelForCausalLM.from_pretrained(folder)
tokenizer = AutoTokenizer.from_pretrained(folder)
prompt = tokenizer("ROMEO:\\nBut soft, what light", return_tensors="pt")
output = model.generate(**prompt, max_new_tokens=16, do_sample=False)
with torch.no_grad():
    logits = model(input_ids=prompt["input_ids"]).logits
print(json.dumps({
    "prompt_ids": prompt["input_ids"][0].tolist(),
    "output_ids": output[0].tolist(),
    "text": tokenizer.decode(output[0]),
    "logits": logits[0, -1, :8].tolist(),
    "eos": tokenizer.eos_token_id,
    "growlength_imported": any(m.startswith("growlength") for m in sys.modules),
}))
"""


@pytest.mark.parametrize("model", ["tiny", "llama-tiny"])  # GPT-NeoX untied; Llama with tied embeddings
def test_export_loads_and_generates_without_growlength(model, corpus, tmp_path):
    run = tmp_path / "run"
    train(tiny_config(corpus, model=model, budget_steps=8, evals=1, eval_tokens=1024), run, show_progress=False)
    assert main(["export", "--ckpt", str(run), "--out", str(tmp_path / "hf")]) == 0
    result = subprocess.run(
        [sys.executable, "-c", LOAD_AND_GENERATE, str(tmp_path / "hf")],
        capture_output=True,
        text=True,
        env=CHILD_ENV,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert not got["growlength_imported"]
    assert got["output_ids"][: len(got["prompt_ids"])] == got["prompt_ids"]
    assert len(got["output_ids"]) > len(got["prompt_ids"])  # it continued the prompt
    assert got["text"].startswith("ROMEO:\nBut soft, what light")  # the tokenizer round-trips text
    assert got["eos"] == json.loads((corpus / "meta.json").read_text())["eos_id"]
    # the exported weights compute what the checkpoint computes
    path = resolve_checkpoint(run)
    ours = model_from_checkpoint(path, AutoConfig.from_pretrained(str(path)), "cpu")
    with torch.no_grad():
        logits = ours(input_ids=torch.tensor([got["prompt_ids"]])).logits[0, -1, :8]
    assert torch.allclose(logits, torch.tensor(got["logits"]), atol=1e-5)
    provenance = json.loads((tmp_path / "hf" / "growlength.json").read_text())
    assert provenance["step"] == 8 and provenance["trained_lengths"] == [64, 128, 256]


def test_export_refuses_a_non_empty_folder_and_another_tokenizer(corpus, tmp_path, capsys):
    run = tmp_path / "run"
    train(tiny_config(corpus, budget_steps=2, evals=1, eval_tokens=1024), run, show_progress=False)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    assert main(["export", "--ckpt", str(run), "--out", str(tmp_path / "full")]) == 2
    assert "is not empty" in capsys.readouterr().err
    other = tmp_path / "other"
    assert main(["prepare", "--input", "shakespeare", "--out", str(other), "--vocab-size", "300"]) == 0
    assert main(["export", "--ckpt", str(run), "--out", str(tmp_path / "hf"), "--data", str(other)]) == 2
    assert "not the tokenizer this model was trained with" in capsys.readouterr().err
    assert not (tmp_path / "hf").exists()
