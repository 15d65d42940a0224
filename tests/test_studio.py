"""`quickft studio`: its API over real run directories (trained here, on CPU), its bad-input exits, and the page in a
real browser (headless Chromium driven by Selenium) while a run trains.

One studio process serves the whole module (it starts `quickft serve` children on demand); every process started
here is stopped at teardown, its whole process group.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import PROMPT, ROOT, SUMS, write_recipe

CHROMEDRIVER = "/usr/bin/chromedriver"  # Debian's chromium-driver: passed explicitly, so Selenium downloads nothing
CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None or not Path(CHROMEDRIVER).is_file(),
    reason="needs Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver; .ci/run does)",
)


def lora_body(model: Path, sums: Path, *, learning_rate: float, r: int, max_steps: int, extra: str = "") -> str:
    return f"""
        recipe = Recipe(
            model={str(model)!r},
            data=Data(path={str(sums)!r}, prompt_template={PROMPT!r}, holdout=4),
            mode="lora",
            lora=LoRA(r={r}, alpha={2 * r}, dropout=0.0),
            max_seq_length=32,
            micro_batch_size=8,
            learning_rate={learning_rate},
            max_steps={max_steps},
            logging_steps=2,
            max_new_tokens=4,
            backend="peft",
            {extra}
        )
        """


def pairs_file(path: Path) -> Path:
    """Preference pairs on the sums: the right sum chosen, a wrong one rejected (as tests/methods/test_preference.py)."""
    import random

    rng = random.Random(0)
    pairs = [
        {"prompt": f"¿Cuánto es {a} + {b}?", "chosen": str(a + b), "rejected": str(a + b + rng.choice([-1, 1, 10]))}
        for a, b in SUMS
    ]
    path.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs), encoding="utf-8")
    return path


def method_bodies(model: Path, sums: Path, pairs: Path) -> dict[str, str]:
    """Tiny DPO, KTO and GRPO runs (as tests/methods/test_preference*.py and tests/methods/test_grpo.py train them);
    DPO logs every step, so its first row is step 1's, where the policy is still the reference model."""

    def common(path: Path) -> str:
        return f"data=Data(path={str(path)!r}, prompt_template={PROMPT!r}, holdout=4), micro_batch_size=8, max_new_tokens=4"

    return {
        "dpo": f"""
            from quickft import DPO

            recipe = Recipe(model={str(model)!r}, method="dpo", dpo=DPO(beta=0.1), max_seq_length=64, max_steps=6,
                learning_rate=5e-3, logging_steps=1, {common(pairs)})
            """,
        "kto": f"""
            from quickft import KTO

            recipe = Recipe(model={str(model)!r}, method="kto", kto=KTO(beta=0.1), max_seq_length=64, max_steps=4,
                learning_rate=5e-3, {common(pairs)})
            """,
        "grpo": f"""
            from quickft import GRPO
            from quickft.rewards import exact_answer

            def shortest(completions, **kwargs):
                return [-len(c) / 10 for c in completions]

            recipe = Recipe(model={str(model)!r}, method="grpo", max_seq_length=48, max_steps=4, learning_rate=5e-3,
                grpo=GRPO(rewards=[exact_answer(), shortest], reward_weights=[1.0, 0.5], num_generations=4),
                {common(sums)})
            """,
    }


@pytest.fixture(scope="module")
def outputs(tmp_path_factory, tiny_model_dir, sums_file) -> Path:
    """An outputs directory of finished runs (the real training): two SFT runs that differ in learning rate and
    LoRA rank; one that answers "€€€" cut mid-character by max_new_tokens; a run of one step and no test cases; tiny
    DPO, KTO and GRPO runs. Their data lie beside it, in the directory the studio is started from (it reads no data
    elsewhere)."""
    from quickft.cli import main

    tmp = tmp_path_factory.mktemp("studio")
    out = tmp / "outputs"
    sums_file = Path(shutil.copy(sums_file, tmp / "sums.txt"))
    euros = tmp / "euros.txt"  # "€" is three bytes, each a token of the tiny tokenizer (trained on the sums)
    euros.write_text(
        "\n###\n".join(f"Pregunta: ¿Cuánto es {a} + {b}?\nRespuesta: €€€" for a, b in SUMS) + "\n", encoding="utf-8"
    )
    bodies = {
        # sums_a trains long enough to answer with digits (two-digit answers: streamed as two tokens)
        name: lora_body(
            tiny_model_dir, sums_file, learning_rate=lr, r=r, max_steps=steps, extra=f"eval=Eval(every={steps // 2}),"
        )
        for name, lr, r, steps in (("sums_a", 1e-2, 4, 40), ("sums_b", 2e-3, 8, 12))
    }
    bodies["euros"] = lora_body(tiny_model_dir, euros, learning_rate=1e-2, r=4, max_steps=20)
    one_step = lora_body(tiny_model_dir, sums_file, learning_rate=1e-3, r=4, max_steps=1)
    bodies["one_step"] = one_step.replace("holdout=4", "holdout=0").replace("logging_steps=2", "logging_steps=1")
    bodies |= method_bodies(tiny_model_dir, sums_file, pairs_file(tmp / "pairs.jsonl"))
    for name, body in bodies.items():
        recipe = write_recipe(tmp / f"{name}.py", body)
        assert main(["run", str(recipe), "--output-dir", str(out / name), "--quiet"]) == 0, name
    return out


def stop_group(process: subprocess.Popen) -> None:
    """Stop a process we started and everything it started (its own process group): politely, then for good."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # children left behind (a serve child) go too
    except ProcessLookupError:
        pass
    process.wait()


def start_studio(outputs: Path, *args: str, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """`quickft studio OUTPUTS --port 0 ARGS` in its own process group, started from the outputs' parent (where
    the runs' data are): the process and the address it printed."""
    process = subprocess.Popen(
        [sys.executable, "-m", "quickft", "studio", str(outputs), "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        cwd=outputs.parent,
        env=os.environ | (env or {}),
    )
    line = process.stdout.readline()
    found = re.search(r"http://127\.0\.0\.1:\d+/\S*", line)
    if not found:
        stop_group(process)
        raise AssertionError(f"no URL in the studio's first line: {line!r}")
    return process, found.group(0)


@pytest.fixture(scope="module")
def studio_process(outputs):
    """The module's studio: (its process, its URL)."""
    process, url = start_studio(outputs)
    try:
        yield process, url
    finally:
        stop_group(process)


@pytest.fixture(scope="module")
def studio(studio_process) -> str:
    return studio_process[1]


def get(url: str):
    import httpx

    response = httpx.get(url, timeout=30)
    assert response.status_code == 200, response.text
    return response.json() if "json" in response.headers["content-type"] else response.text


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# ------------------------------------------------------------------------------------------------ the API


def test_runs_list_reads_status_backend_method_steps_and_best_score(studio, outputs):
    failed = outputs / "sums_failed"  # a copy of a real run, marked as a crash marks it
    shutil.copytree(outputs / "sums_b", failed)
    from quickft.rundir import set_status

    set_status(failed, "failed", error="RuntimeError: boom")
    try:
        runs = {r["name"]: r for r in get(studio + "api/runs")["runs"]}
    finally:
        shutil.rmtree(failed)
    assert {"sums_a", "sums_b", "sums_failed"} <= set(runs)
    a = runs["sums_a"]
    assert a["status"] == "completed" and runs["sums_failed"]["status"] == "failed"
    assert a["backend"] == "peft" and a["method"] == "sft" and a["steps"] == 40
    summary = json.loads((outputs / "sums_a" / "summary.json").read_text())
    scores = [r["case_score"] for r in rows_of(outputs / "sums_a" / "metrics.jsonl") if "case_score" in r]
    assert len(scores) == 2, "Eval(every=6) scores the test cases at steps 6 and 12"
    assert a["best_score"] == max([*scores, summary["test_cases"]["score"]])


def test_run_page_data_is_the_run_directorys(studio, outputs):
    run = get(studio + "api/runs/sums_a")
    recipe = json.loads((outputs / "sums_a" / "recipe.json").read_text())
    assert run["recipe"] == recipe and run["recipe"]["learning_rate"] == 1e-2
    assert run["samples"] == rows_of(outputs / "sums_a" / "samples.jsonl") and len(run["samples"]) == 4
    # the end report as the console printed it: its table and the answers marked ✓ or ✗
    assert "quickft report" in run["report"] and "steps / epochs" in run["report"]
    assert ("✓" in run["report"]) or ("✗" in run["report"])
    assert "test cases (exact)" in run["report"]


def test_metrics_are_sent_from_the_row_the_page_has(studio, outputs):
    rows = rows_of(outputs / "sums_a" / "metrics.jsonl")
    assert len(rows) == 20 + 2  # a row every 2 steps, and one per evaluation
    assert get(studio + "api/runs/sums_a/metrics")["rows"] == rows
    later = get(studio + "api/runs/sums_a/metrics?since=5")
    assert later["rows"] == rows[5:] and later["status"] == "completed"
    assert get(studio + f"api/runs/sums_a/metrics?since={len(rows)}")["rows"] == []


def test_a_line_still_being_written_is_left_for_the_next_poll(tmp_path, outputs):
    from quickft.studio.runs import metric_rows

    run = tmp_path / "run"
    shutil.copytree(outputs / "sums_a", run)
    whole = rows_of(run / "metrics.jsonl")
    with open(run / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write('{"step": 14, "loss": 1.2')  # the recorder is mid-write
    assert metric_rows(run) == whole


def test_compare_uses_quickft_compares_settings_and_table(studio, outputs):
    from quickft.compare import settings_that_differ

    cmp = get(studio + "api/compare?run=sums_a&run=sums_b")
    recipes = [json.loads((outputs / n / "recipe.json").read_text()) for n in ("sums_a", "sums_b")]
    assert cmp["settings"] == settings_that_differ(recipes)
    assert cmp["settings"]["learning_rate"] == [1e-2, 2e-3] and cmp["settings"]["lora.r"] == [4, 8]
    assert cmp["settings"]["max_steps"] == [40, 12]
    assert [row["steps"] for row in cmp["table"]] == [40, 12]
    assert cmp["table"][1]["ratios"]["final_loss"]["text"] != "-"


SUMS_A_SETS = {
    # what sums_a's recipe (lora_body) sets to other than the Recipe defaults ...
    "model",
    "data.path",
    "data.prompt_template",
    "data.holdout",
    "lora.r",
    "lora.alpha",
    "lora.dropout",
    "max_seq_length",
    "micro_batch_size",
    "learning_rate",
    "max_steps",
    "logging_steps",
    "max_new_tokens",
    "backend",
    "eval.every",
    # ... and what quickft run filled in: the run's name (the recipe file's), the data's format (found from it)
    "name",
    "data.format",
}


def test_settings_are_shown_against_the_recipe_defaults_for_the_runs_own_method(studio, outputs):
    from quickft.recipe import Recipe

    view = get(studio + "api/runs/sums_a")["settings"]
    rows = {row["key"]: row for row in view["rows"]}
    assert {key for key, row in rows.items() if row["differs"]} == SUMS_A_SETS
    assert rows["learning_rate"]["value"] == 1e-2 and rows["learning_rate"]["default"] == Recipe.learning_rate
    assert rows["lora.r"]["default"] == 16 and rows["model"]["required"]
    assert not any(key.startswith(("dpo.", "orpo.", "simpo.", "kto.", "grpo.")) for key in rows)
    assert view["hidden_sections"] == ["dpo", "orpo", "simpo", "kto", "grpo"]
    dpo = {row["key"] for row in get(studio + "api/runs/dpo")["settings"]["rows"]}
    assert {"dpo.beta", "dpo.loss_type", "lora.r"} <= dpo and not any(k.startswith(("kto.", "grpo.")) for k in dpo)


def running_copy(outputs: Path, name: str, tmp_path: Path) -> Path:
    from quickft.rundir import set_status

    run = tmp_path / name
    shutil.copytree(outputs / name, run)
    set_status(run, "running")
    return run


def test_progress_says_estimating_until_the_pace_is_measured_and_counts_epochs(tmp_path, outputs):
    """A run's progress from its rows: "estimating" on the first rows (the first step's time holds the warm-up);
    with epochs instead of max_steps, the planned steps are the data's batches times the epochs."""
    from quickft.studio.runs import STABLE_AFTER, progress

    run = running_copy(outputs, "sums_a", tmp_path)
    rows = rows_of(run / "metrics.jsonl")
    train = [r for r in rows if "loss" in r]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train[:2]), encoding="utf-8")
    early = progress(run)
    assert early["estimating"] and early["eta_s"] is None
    assert (early["step"], early["planned"], early["fraction"]) == (4, 40, 0.1)

    # the same rows spread over more time (a slower machine): the pace is measured, the time left follows from it
    slow = [r | {"elapsed_s": 10.0 * r["step"]} for r in train]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in slow[:10]), encoding="utf-8")
    assert 10 * (slow[9]["step"] - slow[0]["step"]) >= STABLE_AFTER[1]
    measured = progress(run, now=(run / "metrics.jsonl").stat().st_mtime)
    assert not measured["estimating"] and measured["pace_s"] == pytest.approx(10.0)
    assert measured["eta_s"] == pytest.approx(10.0 * (40 - slow[9]["step"]))

    recipe = json.loads((run / "recipe.json").read_text())
    (run / "recipe.json").write_text(json.dumps(recipe | {"max_steps": None, "epochs": 2.0}))
    batches = -(-(len(SUMS) - 4) // 8)  # the sums less the 4 held out, 8 to a micro-batch
    by_epochs = progress(run)
    assert by_epochs["planned"] == 2 * batches and not by_epochs["planned_exact"]


def test_only_run_directories_under_outputs_are_read(studio):
    import httpx

    for path in ("api/runs/..%2F..%2Fetc", "api/runs/nope", "api/runs/sums_a/plots/..%2Frecipe.json"):
        assert httpx.get(studio + path, timeout=10).status_code == 404, path


def test_every_asset_is_served_by_the_studio_itself(studio):
    import plotly

    page = get(studio)
    sources = re.findall(r'src="([^"]+)"', page) + re.findall(r'<link[^>]* href="([^"]+)"', page)
    assert sources and all(s.startswith("/static/") for s in sources), sources
    shipped = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    import httpx

    served = httpx.get(studio + "static/plotly.min.js", timeout=30)
    assert served.status_code == 200 and served.content == shipped.read_bytes()
    scripts = [s for s in sources if s.endswith(".js") and "plotly" not in s]
    assert {"/static/studio.js", "/static/plots.js", "/static/tabs.js"} <= set(scripts)
    for script in scripts:
        assert not re.search(r"https?://", get(studio + script[1:])), f"{script} fetches nothing from elsewhere"


def post(url: str, body: dict, **options):
    import httpx

    return httpx.post(url, json=body, timeout=options.pop("timeout", 300), **options)


def test_masking_preview_is_quickft_datas(studio, outputs):
    response = post(studio + "api/runs/sums_a/masking", {"n": 2})
    assert response.status_code == 200, response.text
    data = response.json()
    assert len(data["examples"]) == 2
    for example in data["examples"]:
        masked = "".join(p["text"] for p in example["pieces"] if not p["trained"])
        trained = "".join(p["text"] for p in example["pieces"] if p["trained"])
        assert masked.startswith("Pregunta: ¿Cuánto es") and masked.rstrip().endswith("Respuesta:")
        a, b = map(int, re.findall(r"\d+", masked)[:2])
        assert trained.startswith(str(a + b)), (masked, trained)  # the answer is what the loss sees
    assert data["report"]["counts"]["kept_for_training"] > 0


def test_masking_previews_are_made_one_at_a_time_in_a_child(studio, studio_process):
    """Each preview is a child process that loads a tokenizer: a second request while one is being made is refused
    (503), not queued, so a page (or a script) cannot pile up children; the studio itself never loads torch (nor, so,
    transformers): its memory stays the server's."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(post, studio + "api/runs/sums_b/masking", {"n": 1})
        time.sleep(0.5)  # the first child is loading (Python, torch and a tokenizer take seconds)
        second = post(studio + "api/runs/sums_b/masking", {"n": 1})
        assert second.status_code == 503, second.text
        assert second.json()["error"] == "a masking preview is being made"
        assert first.result().status_code == 200
    assert post(studio + "api/runs/sums_b/masking", {"n": 1}).status_code == 200  # free again once it is done
    maps = Path(f"/proc/{studio_process[0].pid}/maps").read_text()
    assert "libtorch" not in maps, "the studio's own process loaded torch"


def sse_texts(response) -> list[dict]:
    return [json.loads(line[6:]) for line in response.text.split("\n\n") if line.startswith("data: ")]


def question(case: dict) -> str:
    """The user's text of a test case (samples.jsonl keeps the prompt as framed: 'Pregunta: ...\nRespuesta: ')."""
    return re.fullmatch(r"Pregunta: (.*)\nRespuesta: ", case["prompt"]).group(1)


def two_token_case(run: Path) -> dict:
    """A test case the run answered with two or more digits (each digit is one token of the tiny tokenizer)."""
    cases = [c for c in rows_of(run / "samples.jsonl") if len(c["answer"].strip()) >= 2]
    assert cases, "the run answers its test cases with digits (trained long enough)"
    return cases[0]


def test_chat_streams_the_runs_answer_through_quickft_serve(studio, outputs):
    import httpx

    case = two_token_case(outputs / "sums_a")
    body = {"messages": [{"role": "user", "content": question(case)}]}
    response = httpx.post(studio + "api/runs/sums_a/chat", json=body, timeout=300)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = sse_texts(response)
    assert events[-1] == {"done": True}, events
    pieces = [e["text"] for e in events if "text" in e]
    # greedy, framed as in training: the answer the run gave this test case when it finished
    assert "".join(pieces).strip() == case["answer"].strip()
    assert len(pieces) >= 2, "streamed in pieces, not as one answer"


def test_base_vs_fine_tuned_answers_with_both_models(studio, outputs):
    import httpx

    case = two_token_case(outputs / "sums_a")
    body = {"messages": [{"role": "user", "content": question(case)}]}
    out = httpx.post(studio + "api/runs/sums_a/compare-base", json=body, timeout=300).json()
    assert out["tuned"].strip() == case["answer"].strip(), out  # the adapter on: the run's own answer
    assert out["base"] != out["tuned"] and out["base_label"].startswith("base model"), out  # the adapter off


def test_chat_is_refused_for_a_run_that_is_not_completed(studio, outputs):
    import httpx

    from quickft.rundir import set_status

    unfinished = outputs / "sums_interrupted"
    shutil.copytree(outputs / "sums_b", unfinished)
    set_status(unfinished, "interrupted")
    try:
        response = httpx.post(
            studio + "api/runs/sums_interrupted/chat",
            json={"messages": [{"role": "user", "content": "1"}]},
            timeout=120,
        )
    finally:
        shutil.rmtree(unfinished)
    assert response.status_code == 400 and "interrupted, not completed" in response.json()["error"]


# ------------------------------------------------------------------------------------------------ hostile pages and files


def children_of(process: subprocess.Popen) -> dict[int, str]:
    """The studio's child processes now: pid -> "serve RUN" or "base RUN"."""
    import psutil

    found = {}
    for child in psutil.Process(process.pid).children():
        try:
            args = child.cmdline()
        except psutil.NoSuchProcess:
            continue
        if "serve" in args:
            found[child.pid] = f"serve {Path(args[args.index('serve') + 1]).name}"
        elif "quickft.studio.base" in args:
            found[child.pid] = f"base {Path(args[-1]).name}"
    return found


def test_dns_rebinding_cross_site_requests_and_forms_are_refused(studio_process, studio):
    """A web page can make the browser send requests to 127.0.0.1: under its own host name after DNS rebinding
    (refused: loopback names only), from its own origin (refused), or as a form post, which cannot send JSON (415).
    The routes that do work are POSTs: a GET (an <img> or a link) starts nothing."""
    import httpx

    port = studio.split(":")[2].rstrip("/")
    rebound = httpx.get(studio + "api/runs", headers={"Host": f"attacker.example:{port}"}, timeout=30)
    assert rebound.status_code == 400 and "sums_a" not in rebound.text
    assert httpx.get(studio + "api/runs", headers={"Host": f"localhost:{port}"}, timeout=30).status_code == 200
    before = children_of(studio_process[0])
    chat = {"messages": [{"role": "user", "content": "1 + 1"}]}
    cross = post(studio + "api/runs/sums_b/chat", chat, headers={"Origin": "http://evil.example"})
    assert cross.status_code == 403 and "http://evil.example is refused" in cross.json()["error"]
    form = httpx.post(
        studio + "api/runs/sums_b/chat",
        content=json.dumps(chat),
        headers={"Content-Type": "text/plain", "Origin": studio.rstrip("/")},  # the page's own origin, even
        timeout=30,
    )
    assert form.status_code == 415
    for path in ("api/runs/sums_b/masking?n=2", "api/runs/sums_b/chat"):
        assert httpx.get(studio + path, timeout=30).status_code == 405, path
    assert children_of(studio_process[0]) == before, "no serve child was started for them"


def test_nothing_outside_the_outputs_folder_is_read(studio, outputs, tmp_path):
    """Symlinks (a run folder, a plot) and a run's recipe (its data paths) cannot make the studio read elsewhere."""
    import httpx

    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(outputs / "sums_b", elsewhere)
    linked, with_passwd, reads_passwd = outputs / "sums_linked", outputs / "sums_passwd", outputs / "sums_etc"
    linked.symlink_to(elsewhere, target_is_directory=True)
    shutil.copytree(outputs / "sums_b", with_passwd)
    (with_passwd / "passwd.png").symlink_to("/etc/passwd")
    shutil.copytree(outputs / "sums_b", reads_passwd)
    recipe = json.loads((reads_passwd / "recipe.json").read_text())
    recipe["data"]["path"] = "/etc/passwd"
    (reads_passwd / "recipe.json").write_text(json.dumps(recipe))
    try:
        listed = {r["name"] for r in get(studio + "api/runs")["runs"]}
        assert "sums_b" in listed and "sums_etc" in listed
        assert not {"sums_linked", "sums_passwd"} & listed
        for path in ("api/runs/sums_linked", "api/runs/sums_linked/metrics", "api/runs/sums_passwd/plots/passwd.png"):
            refused = httpx.get(studio + path, timeout=30)
            assert refused.status_code == 403 and "links outside" in refused.json()["error"], path
            assert "root:" not in refused.text
        masking = post(studio + "api/runs/sums_etc/masking", {"n": 2})
        assert masking.status_code == 403 and "root:" not in masking.text
        assert masking.json()["error"].startswith("data.path '/etc/passwd' is outside ")
    finally:
        linked.unlink()
        shutil.rmtree(with_passwd)
        shutil.rmtree(reads_passwd)


def test_deep_json_is_a_400(studio):
    import httpx

    deep = httpx.post(
        studio + "api/runs/sums_a/chat",
        content=b"[" * 100_000 + b"]" * 100_000,
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert deep.status_code == 400 and deep.json() == {"detail": "the body is not a JSON object"}


def test_allow_remote_needs_the_token_printed_at_start(outputs):
    """--allow-remote (here still on loopback): every request needs the token in the address the studio printed,
    as Jupyter's; the address sets it as a cookie (SameSite=Strict) and takes it out of the address bar."""
    import httpx

    process, url = start_studio(outputs, "--allow-remote")
    try:
        base, token = url.split("?token=")
        assert len(token) >= 32
        for refused in (base + "api/runs", base + "api/runs?token=wrong", base):
            response = httpx.get(refused, timeout=30)
            assert response.status_code == 401 and "needs its token" in response.json()["error"], refused
        opened = httpx.get(url, timeout=30)  # no redirects followed: the cookie it sets
        assert opened.status_code == 303 and opened.headers["location"] == "/"
        cookie = opened.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie
        name = cookie.split("=", 1)[0]
        assert httpx.get(base + "api/runs", cookies={name: token}, timeout=30).json()["runs"]
        assert httpx.get(base + "api/runs", headers={"Authorization": f"Bearer {token}"}, timeout=30).status_code == 200
        cross = post(
            base + "api/runs/sums_b/chat",
            {"messages": [{"role": "user", "content": "1"}]},
            cookies={name: token},
            headers={"Origin": "http://evil.example"},
        )
        assert cross.status_code == 403
    finally:
        stop_group(process)


def test_children_are_keyed_bounded_and_stop_with_a_sigterm(outputs):
    """With QUICKFT_API_KEY set (the studio's serve children get a key of the studio's own, so chat works and only
    the studio can talk to them), three children asked for: at most MAX_CHILDREN run, the least recently used is
    stopped. Then SIGTERM to the studio alone: its children go with it."""
    import httpx
    import psutil

    from quickft.studio.children import MAX_CHILDREN

    assert MAX_CHILDREN == 2
    process, url = start_studio(outputs, env={"QUICKFT_API_KEY": "the-users-own-key"})
    try:
        case = two_token_case(outputs / "sums_a")
        question_ = {"messages": [{"role": "user", "content": question(case)}]}
        events = sse_texts(post(url + "api/runs/sums_a/chat", question_))
        assert events[-1] == {"done": True}, events
        assert "".join(e["text"] for e in events if "text" in e).strip() == case["answer"].strip()
        (serve_a,) = children_of(process)
        ports = [c.laddr.port for c in psutil.Process(serve_a).net_connections("tcp") if c.status == "LISTEN"]
        for key in (None, "the-users-own-key"):
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            assert httpx.get(f"http://127.0.0.1:{ports[0]}/v1/models", headers=headers).status_code == 401

        assert sse_texts(post(url + "api/runs/sums_b/chat", question_))[-1] == {"done": True}
        assert sorted(children_of(process).values()) == ["serve sums_a", "serve sums_b"]
        both = post(url + "api/runs/sums_a/compare-base", question_).json()
        assert both["tuned"].strip() == case["answer"].strip(), both
        # the third child took the place of the least recently used one
        assert sorted(children_of(process).values()) == ["base sums_a", "serve sums_b"]
        assert not psutil.pid_exists(serve_a) or psutil.Process(serve_a).status() == psutil.STATUS_ZOMBIE

        children = list(children_of(process))
        process.send_signal(signal.SIGTERM)  # the studio alone, not its process group
        process.wait(30)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(psutil.pid_exists(pid) for pid in children):
            time.sleep(0.2)
        assert not any(psutil.pid_exists(pid) for pid in children), "the children outlived the studio"
    finally:
        stop_group(process)


def test_a_child_in_use_is_never_stopped_to_make_room(outputs):
    """One child allowed: while it answers, another run's child is refused (Busy, a 503 in the app); once it is
    handed back, the new one takes its place."""
    from quickft.studio.children import Busy, Children

    children = Children(limit=1)
    try:
        base = children.base_worker(outputs / "sums_a")
        with pytest.raises(Busy, match="already runs 1 models"):
            children.serve(outputs / "sums_b")
        assert base.child.alive()
        base.release()
        base.release()  # idempotent: the stream's end and the response's background task may both release it
        serve = children.serve(outputs / "sums_b")
        assert serve.child.alive() and not base.child.alive()
        serve.release()
    finally:
        children.stop_all()


# ------------------------------------------------------------------------------------------------ bad input


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    from quickft.cli import main

    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_a_directory_without_runs_is_exit_2(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not a run")
    code, out = run_cli(["studio", str(tmp_path)], capsys)
    assert code == 2 and "holds no quickft runs" in out and "Traceback" not in out
    code, out = run_cli(["studio", str(tmp_path / "missing")], capsys)
    assert code == 2 and "is not a directory" in out


def test_one_run_directory_is_exit_2_naming_its_parent(outputs, capsys):
    code, out = run_cli(["studio", str(outputs / "sums_a")], capsys)
    assert code == 2 and f"quickft studio {outputs}" in out


def test_a_port_in_use_is_exit_2(outputs, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        code, out = run_cli(["studio", str(outputs), "--port", str(port)], capsys)
    assert code == 2 and f"cannot listen on 127.0.0.1:{port}" in out and "Traceback" not in out


def test_a_host_beyond_loopback_needs_allow_remote(outputs, capsys):
    code, out = run_cli(["studio", str(outputs), "--host", "0.0.0.0"], capsys)  # refused before anything listens
    assert code == 2 and "--allow-remote" in out


def test_help_has_examples_and_imports_no_web_or_training_library():
    heavy = ("torch", "transformers", "fastapi", "uvicorn", "plotly", "httpx")
    code = (
        "import sys; from quickft.cli import main; main(['studio', '--help']); "
        f"print([m for m in {heavy} if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert "quickft studio outputs --port 8765" in out and "--allow-remote" in out
    assert out.strip().endswith("[]")


# ------------------------------------------------------------------------------------------------ the browser


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_script_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(condition, timeout: float, what: str, every: float = 0.25):
    """condition() until it is true; an element the page redrew between finding it and reading it (its poll
    replaces the progress line, the panels) counts as not yet, as in selenium's own WebDriverWait."""
    from selenium.common.exceptions import StaleElementReferenceException

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if value := condition():
                return value
        except StaleElementReferenceException:
            pass
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def progress_texts(driver) -> dict[str, str]:
    """The live run's progress line and its parts, read in one script: the page's poll replaces the parts (so an
    element found before a redraw is stale after it), and one read never mixes an old part with a new one."""
    return driver.execute_script(
        "const t = (id) => { const e = document.getElementById(id); return e ? e.innerText : ''; };"
        "return {progress: t('run-progress'), elapsed: t('progress-elapsed'), eta: t('progress-eta')};"
    )


def points(driver, div: str) -> int:
    """How many points the first trace of a plot on the page has (0 before it is drawn)."""
    return driver.execute_script(
        f"const d = document.getElementById('{div}'); return d && d.data && d.data[0] ? d.data[0].x.length : 0;"
    )


@pytest.fixture
def shots(outputs) -> Path:
    """Where the browser tests leave their screenshots (test artifacts): QUICKFT_STUDIO_SHOTS, else beside the
    module's outputs."""
    folder = Path(os.environ.get("QUICKFT_STUDIO_SHOTS", outputs.parent / "screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def traces(driver, div: str) -> dict[str, tuple[list, list]]:
    """The lines a plot on the page draws: {legend name: (steps, values)}."""
    return {
        t["name"]: (t["x"], t["y"])
        for t in driver.execute_script(
            f"return document.getElementById('{div}').data.map(t => ({{name: t.name, x: t.x, y: t.y}}));"
        )
    }


def panel_texts(driver, panel: str) -> dict:
    """What a panel shows in words: its title, caption, legend entries, axis tick labels and any note in it."""
    return driver.execute_script(
        f"""const box = document.getElementById('{panel}-box');
        const all = (sel) => [...box.querySelectorAll(sel)].map((n) => n.textContent);
        return {{title: box.querySelector('.plot-title').textContent, caption: box.querySelector('figcaption')
          .textContent, legend: all('.legendtext'), x: all('.xtick text'), y: all('.ytick text'),
          notes: all('.annotation-text')}};"""
    )


def legend_outside_the_data(driver, panel: str) -> bool | None:
    """Whether the plot's legend box lies clear of its data area (None: no legend shown)."""
    return driver.execute_script(
        f"""const d = document.getElementById('{panel}'); const legend = d.querySelector('.legend');
        if (!legend) return null;
        const a = legend.getBoundingClientRect(), b = d.querySelector('.nsewdrag').getBoundingClientRect();
        return a.bottom <= b.top + 1 || a.top >= b.bottom - 1 || a.right <= b.left + 1 || a.left >= b.right - 1;"""
    )


def open_run(driver, studio: str, name: str, *, panel: str = "plot-loss") -> None:
    driver.get(studio + "#/run/" + name)
    driver.refresh()  # a new hash alone would keep the page: every run page starts afresh
    wait_for(lambda: points(driver, panel), 30, f"{name}'s curves")


def full_shot(driver, path: Path) -> None:
    """A screenshot of the whole page (the window made as tall as the page, then put back)."""
    width, height = driver.get_window_size().values()
    driver.set_window_size(width, max(height, driver.execute_script("return document.body.scrollHeight;") + 20))
    time.sleep(0.5)  # plotly redraws at the new size
    driver.save_screenshot(str(path))
    driver.set_window_size(width, height)


def train_rows(run: Path) -> list[dict]:
    return [r for r in rows_of(run / "metrics.jsonl") if "loss" in r]


def duration_s(text: str) -> float:
    """The page's durations ("42 s", "3 min 05 s", "1 h 04 min") in seconds."""
    units = {"h": 3600, "min": 60, "s": 1}
    found = re.findall(r"(\d+) (h|min|s)\b", text)
    assert found, text
    return sum(int(n) * units[u] for n, u in found)


@needs_chromium
def test_the_page_follows_a_run_as_it_trains_compares_and_chats(
    studio, outputs, browser, tiny_model_dir, sums_file, shots
):
    recipe = write_recipe(
        outputs.parent / "live.py", lora_body(tiny_model_dir, sums_file, learning_rate=1e-3, r=4, max_steps=2000)
    )
    started = time.monotonic()
    live = subprocess.Popen(
        [sys.executable, "-m", "quickft", "run", str(recipe), "--output-dir", str(outputs / "live"), "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        cwd=ROOT,
    )
    try:
        # the runs list, then the live run's page, which polls metrics.jsonl while the run trains
        browser.get(studio)
        wait_for(lambda: browser.find_elements("css selector", "tr[data-run=sums_a]"), 20, "the runs list")
        metrics = outputs / "live" / "metrics.jsonl"
        wait_for(lambda: metrics.is_file() and metrics.read_text().count("\n") >= 1, 90, "the live run's first row")
        first_row = (time.monotonic(), train_rows(outputs / "live")[-1]["step"])  # our own clock, and the step then
        browser.get(studio + "#/run/live")
        first = wait_for(lambda: points(browser, "plot-loss"), 30, "the live run's loss curve")
        status = browser.find_element("css selector", "#run-status .status").get_attribute("data-status")
        assert status == "running"
        wait_for(lambda: points(browser, "plot-loss") >= first + 3, 30, "the curve to gain points while training")
        assert live.poll() is None, "the run is still training: the points came from polling, not a reload"
        # no test cases are scored while it trains (no eval.every): that panel waits, saying so
        assert panel_texts(browser, "plot-score")["notes"] == ["nothing recorded yet"]

        # progress: the step of 2,000, the time trained, the time left at the recent pace (once it is measured)
        def with_eta():
            texts = progress_texts(browser)
            return texts if re.search(r"about (.+) left", texts["eta"]) else None

        texts = wait_for(with_eta, 90, "the time left")
        now, shown, eta = time.monotonic(), texts["progress"], re.search(r"about (.+) left", texts["eta"]).group(1)
        step = int(re.search(r"step (\d+) of 2000 \((\d+)%\)", shown).group(1))
        assert f"step {step} of 2000 ({100 * step // 2000}%)" in shown
        logged = train_rows(outputs / "live")[-1]["step"]
        assert step <= logged, "a step the run has logged"
        trained = duration_s(texts["elapsed"])
        assert now - first_row[0] - 3 <= trained <= now - started + 1, (trained, now - first_row[0], now - started)
        # the time left against our own clock's pace between the first row and now (the machine is shared: 4x)
        ours = (now - first_row[0]) / (logged - first_row[1])
        left = duration_s(eta)
        assert ours * (2000 - step) / 4 - 2 <= left <= ours * (2000 - step) * 4 + 2, (left, ours, step)
        browser.save_screenshot(str(shots / "live_run.png"))

        # the runs list shows it running
        browser.get(studio + "#/")
        wait_for(lambda: browser.find_elements("css selector", "tr[data-run=live] .status.running"), 20, "live row")
    finally:
        stop_group(live)

    # compare: two runs overlaid, and the settings that differ
    browser.get(studio + "#/compare/sums_a,sums_b")
    count = wait_for(
        lambda: browser.execute_script(
            "const d = document.getElementById('cmp-loss'); return d && d.data ? d.data.length : 0;"
        ),
        30,
        "the compare plot",
    )
    assert count == 2
    names = browser.execute_script("return document.getElementById('cmp-loss').data.map(t => t.name);")
    assert names == ["sums_a", "sums_b"]
    settings = browser.find_element("id", "cmp-settings").text
    assert "learning_rate" in settings and "lora.r" in settings
    full_shot(browser, shots / "compare.png")

    # chat: the answer streams in, in pieces
    case = two_token_case(outputs / "sums_a")
    browser.get(studio + "#/run/sums_a")
    wait_for(lambda: browser.find_elements("css selector", "button[data-tab=chat]"), 20, "the run page")
    browser.find_element("css selector", "button[data-tab=chat]").click()
    browser.find_element("id", "chat-input").send_keys(question(case))
    browser.find_element("id", "chat-send").click()
    answer = wait_for(
        lambda: browser.find_elements("css selector", ".answer[data-done=true]"), 240, "the streamed answer"
    )[0]
    assert answer.text.strip() == case["answer"].strip()
    assert int(answer.get_attribute("data-chunks")) >= 2
    browser.save_screenshot(str(shots / "chat.png"))

    # the masking preview: a POST of JSON from the page, each example's tokens shown as text (they were once shown as
    # "[object HTMLDivElement],[object HTMLDivElement]": an array handed to replaceChildren unspread)
    browser.find_element("css selector", "button[data-tab='data masking']").click()
    browser.find_element("id", "masking-show").click()
    trained = wait_for(lambda: browser.find_elements("css selector", "#masking .tokens .trained"), 120, "the preview")
    assert trained[0].text.strip().isdigit(), "the answer (a sum) is what the loss sees"
    page = browser.find_element("id", "masking").get_attribute("textContent")
    assert "[object" not in page
    expected = post(studio + "api/runs/sums_a/masking", {"n": 3}).json()["examples"]
    shown = [n.get_attribute("textContent") for n in browser.find_elements("css selector", "#masking .tokens")]
    assert len(shown) == 3
    for text, example in zip(shown, expected, strict=True):
        assert text.startswith("".join(p["text"] for p in example["pieces"]))
    browser.save_screenshot(str(shots / "masking.png"))


@needs_chromium
def test_preference_and_grpo_runs_show_their_trainers_curves(studio, outputs, browser, shots):
    """DPO's and KTO's rewards, margin and chosen wins (DPO), GRPO's reward, its spread and the groups with none:
    each line the figures TRL logged into metrics.jsonl, each legend clear of the data."""
    dpo = train_rows(outputs / "dpo")
    assert dpo[0]["step"] == 1 and dpo[0]["rewards/chosen"] == dpo[0]["rewards/rejected"] == 0.0  # the reference
    open_run(browser, studio, "dpo", panel="plot-rewards")
    steps = [r["step"] for r in dpo]
    rewards = traces(browser, "plot-rewards")
    assert rewards["chosen answers"] == (steps, [r["rewards/chosen"] for r in dpo])
    assert rewards["rejected answers"] == (steps, [r["rewards/rejected"] for r in dpo])
    assert rewards["policy = reference (rewards 0)"] == ([1], [0.0])
    assert traces(browser, "plot-margin")["margin"] == (steps, [r["rewards/margins"] for r in dpo])
    wins = traces(browser, "plot-wins")["chosen wins"]  # step 1's 0% would be TRL counting ties: not drawn
    assert wins[0] == steps[1:] and wins[1] == pytest.approx([100 * r["rewards/accuracies"] for r in dpo[1:]])
    words = panel_texts(browser, "plot-rewards")
    assert words["title"] == "rewards of the chosen and rejected answers"
    assert "At step 1 the policy is still the reference model: every reward is 0" in words["caption"]
    assert "Not drawn at step 1" in panel_texts(browser, "plot-wins")["caption"]
    panels = browser.execute_script("return [...document.querySelectorAll('.plot')].map((d) => d.id);")
    assert panels == [f"plot-{p}" for p in ("loss", "rewards", "margin", "wins", "score", "lr", "grad", "speed")] + [
        "plot-memory"
    ]
    for panel in panels:
        assert legend_outside_the_data(browser, panel) is not False, panel
    assert legend_outside_the_data(browser, "plot-rewards"), "a legend is drawn, above the data"
    full_shot(browser, shots / "dpo_curves.png")

    kto = train_rows(outputs / "kto")
    open_run(browser, studio, "kto", panel="plot-rewards")
    rewards = traces(browser, "plot-rewards")
    assert rewards["desirable answers"][1] == [r["rewards/chosen"] for r in kto]
    assert rewards["undesirable answers"][1] == [r["rewards/rejected"] for r in kto]
    assert traces(browser, "plot-kl")["KL estimate"][1] == [r["kl"] for r in kto]
    assert "micro-batches holding both kinds" in panel_texts(browser, "plot-margin")["caption"]
    assert not browser.find_elements("id", "plot-wins"), "KTO judges answers one at a time: no pair wins"

    grpo = train_rows(outputs / "grpo")
    open_run(browser, studio, "grpo", panel="plot-reward")
    steps = [r["step"] for r in grpo]
    reward = traces(browser, "plot-reward")
    assert reward["reward (weighted sum)"] == (steps, [r["reward"] for r in grpo])
    assert reward["± spread over the answers"][1] == pytest.approx([r["reward"] + r["reward_std"] for r in grpo])
    assert reward["reward − spread"][1] == pytest.approx([r["reward"] - r["reward_std"] for r in grpo])
    for name in ("exact_answer", "shortest"):
        assert reward[name] == (steps, [r[f"rewards/{name}/mean"] for r in grpo])
    groups = traces(browser, "plot-groups")
    assert groups["groups with no spread"][1] == pytest.approx([100 * r["frac_reward_zero_std"] for r in grpo])
    assert panel_texts(browser, "plot-loss")["title"] == "GRPO objective"
    for panel in ("plot-reward", "plot-groups", "plot-loss"):
        assert legend_outside_the_data(browser, panel), panel
    full_shot(browser, shots / "grpo_curves.png")


@needs_chromium
def test_axes_say_what_they_show_and_an_empty_panel_says_why(studio, outputs, browser, shots):
    """Memory from 0; a one-step run's step axis in whole steps; a finished run's empty panel says it was not
    recorded (the live run's says "yet": the browser test above)."""
    open_run(browser, studio, "one_step")
    assert points(browser, "plot-loss") == 1
    for panel in ("plot-loss", "plot-lr", "plot-memory"):
        ticks = panel_texts(browser, panel)["x"]
        assert ticks and all(t.isdigit() for t in ticks), (panel, ticks)
    memory = panel_texts(browser, "plot-memory")["y"]
    assert memory[0] == "0" and browser.execute_script(
        "return document.getElementById('plot-memory')._fullLayout.yaxis.range[0];"
    ) == pytest.approx(0)
    assert panel_texts(browser, "plot-score")["notes"] == ["no test cases were scored in this run"]
    full_shot(browser, shots / "one_step.png")
    for name in ("sums_a", "dpo", "grpo"):
        open_run(browser, studio, name)
        notes = browser.execute_script(
            "return [...document.querySelectorAll('.annotation-text')].map((n) => n.textContent);"
        )
        assert not any("yet" in note for note in notes), (name, notes)
        assert browser.find_element("id", "run-progress").text == "", "progress is for a running run"


@needs_chromium
def test_the_settings_tab_highlights_what_differs_from_the_recipe_defaults(studio, outputs, browser, shots):
    def rows():
        return {
            row.get_attribute("data-key"): row
            for row in browser.find_elements("css selector", "#settings tr[data-key]")
        }

    for name, own in (("sums_a", None), ("dpo", "dpo")):
        open_run(browser, studio, name)
        browser.find_element("css selector", "button[data-tab=settings]").click()
        shown = rows()
        sections = {key.split(".")[0] for key in shown if key.split(".")[0] in ("dpo", "orpo", "simpo", "kto", "grpo")}
        assert sections == ({own} if own else set()), "only the run's own method's settings"
        if name == "sums_a":
            highlighted = {key for key, row in shown.items() if "differs" in row.get_attribute("class")}
            assert highlighted == SUMS_A_SETS
            lr = shown["learning_rate"].find_elements("css selector", "td")
            assert [td.text for td in lr] == ["learning_rate", "0.01", "0.0002"]
            colour = lr[1].value_of_css_property("background-color")
            same = shown["seed"].find_elements("css selector", "td")
            assert colour != same[1].value_of_css_property("background-color") and same[2].text == "default"
            full_shot(browser, shots / "settings.png")
            browser.find_element("id", "settings-differ-only").click()
            visible = {key for key, row in rows().items() if row.is_displayed()}
            assert visible == SUMS_A_SETS
        else:
            assert (
                "Not shown: the settings of other methods (orpo, simpo, kto, grpo)"
                in browser.find_element("id", "pane").text
            )


@needs_chromium
def test_base_vs_fine_tuned_leaves_invalid_utf8_out_as_chat_does(studio, outputs, browser, shots):
    """The euros run answers "€€€" cut by max_new_tokens after a byte of the second "€": the test cases, `quickft
    chat` and the page's base vs fine-tuned all leave out the bytes that form no character; chat and the page say so."""
    case = rows_of(outputs / "euros" / "samples.jsonl")[0]
    assert "\ufffd" not in case["answer"] and case["answer"].strip() and case["answer"] != case["reference"], case
    cli = subprocess.run(
        [sys.executable, "-m", "quickft", "chat", str(outputs / "euros"), "--prompt", question(case)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert cli.returncode == 0, cli.stderr
    assert cli.stdout.strip() == case["answer"].strip()
    said = re.search(r"(\d+) piece\(s\) of invalid UTF-8 left out", cli.stderr)
    assert said and int(said.group(1)) >= 1, cli.stderr
    invalid = int(said.group(1))

    open_run(browser, studio, "euros")
    browser.find_element("css selector", "button[data-tab=chat]").click()
    browser.find_element("id", "chat-input").send_keys(question(case))
    browser.find_element("id", "chat-base").click()
    tuned = wait_for(
        lambda: (t := browser.find_element("css selector", "#chat-compare .tuned").text) != "..." and t,
        240,
        "base vs fine-tuned",
    )
    assert tuned == cli.stdout.strip()
    shown = browser.find_element("id", "chat-compare").text
    assert "\ufffd" not in shown and f"{invalid} piece(s) of invalid UTF-8 left out" in shown
    browser.save_screenshot(str(shots / "base_vs_fine_tuned.png"))


def test_best_score_leaves_out_the_starting_model():
    """Preference and GRPO runs record the starting model's score at step 0: a run that fell from 40% to 30% has a
    best score of 30%, not its start."""
    from quickft.studio.runs import best_score

    rows = [{"step": 0, "case_score": 0.4}, {"step": 5, "case_score": 0.2}]
    assert best_score(rows, {"test_cases": {"score": 0.3}}) == 0.3
    assert best_score(rows[:1], None) is None
