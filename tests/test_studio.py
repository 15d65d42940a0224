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

from tests.conftest import PROMPT, ROOT, write_recipe

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


@pytest.fixture(scope="module")
def outputs(tmp_path_factory, tiny_model_dir, sums_file) -> Path:
    """An outputs directory with two finished runs that differ in learning rate and LoRA rank (the real training).
    Their data lie beside it, in the directory the studio is started from (it reads no data elsewhere)."""
    from quickft.cli import main

    tmp = tmp_path_factory.mktemp("studio")
    out = tmp / "outputs"
    sums_file = Path(shutil.copy(sums_file, tmp / "sums.txt"))
    # sums_a trains long enough to answer with digits (two-digit answers: streamed as two tokens)
    for name, lr, r, steps in (("sums_a", 1e-2, 4, 40), ("sums_b", 2e-3, 8, 12)):
        recipe = write_recipe(
            tmp / f"{name}.py",
            lora_body(
                tiny_model_dir,
                sums_file,
                learning_rate=lr,
                r=r,
                max_steps=steps,
                extra=f"eval=Eval(every={steps // 2}),",
            ),
        )
        assert main(["run", str(recipe), "--output-dir", str(out / name), "--quiet"]) == 0
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
    script = get(studio + "static/studio.js")
    assert not re.search(r"https?://", script), "the page's script fetches nothing from elsewhere"


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
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def points(driver, div: str) -> int:
    """How many points the first trace of a plot on the page has (0 before it is drawn)."""
    return driver.execute_script(
        f"const d = document.getElementById('{div}'); return d && d.data && d.data[0] ? d.data[0].x.length : 0;"
    )


@needs_chromium
def test_the_page_follows_a_run_as_it_trains_compares_and_chats(studio, outputs, browser, tiny_model_dir, sums_file):
    shots = Path(os.environ.get("QUICKFT_STUDIO_SHOTS", outputs.parent / "screenshots"))
    shots.mkdir(parents=True, exist_ok=True)
    recipe = write_recipe(
        outputs.parent / "live.py", lora_body(tiny_model_dir, sums_file, learning_rate=1e-3, r=4, max_steps=400)
    )
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
        browser.get(studio + "#/run/live")
        first = wait_for(lambda: points(browser, "plot-loss"), 30, "the live run's loss curve")
        status = browser.find_element("css selector", "#run-status .status").get_attribute("data-status")
        assert status == "running"
        wait_for(lambda: points(browser, "plot-loss") >= first + 3, 30, "the curve to gain points while training")
        assert live.poll() is None, "the run is still training: the points came from polling, not a reload"
        browser.save_screenshot(str(shots / "live_run.png"))

        # the runs list shows it running
        browser.get(studio + "#/")
        wait_for(lambda: browser.find_elements("css selector", "tr[data-run=live] .status.running"), 20, "live row")
    finally:
        stop_group(live)

    # compare: two runs overlaid, and the settings that differ
    browser.get(studio + "#/compare/sums_a,sums_b")
    traces = wait_for(
        lambda: browser.execute_script(
            "const d = document.getElementById('cmp-loss'); return d && d.data ? d.data.length : 0;"
        ),
        30,
        "the compare plot",
    )
    assert traces == 2
    names = browser.execute_script("return document.getElementById('cmp-loss').data.map(t => t.name);")
    assert names == ["sums_a", "sums_b"]
    settings = browser.find_element("id", "cmp-settings").text
    assert "learning_rate" in settings and "lora.r" in settings
    browser.save_screenshot(str(shots / "compare.png"))

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

    # the masking preview: a POST of JSON from the page, each example's tokens shown (they were once "[object ...]")
    browser.find_element("css selector", "button[data-tab='data masking']").click()
    browser.find_element("id", "masking-show").click()
    trained = wait_for(lambda: browser.find_elements("css selector", "#masking .tokens .trained"), 120, "the preview")
    assert trained[0].text.strip().isdigit(), "the answer (a sum) is what the loss sees"
