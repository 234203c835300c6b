"""The web page in a real headless Chromium (Debian's package) driven by Playwright, against a
real uvicorn server: a shared URL shows thumbnails and scores, "more like this", uploads,
sounds that start at the hit, paging and the keyboard, the token prompt, a phone screen.

Screenshots are kept under pytest's temporary folder (printed at the end); with
``MMSEARCH_SCREENSHOTS=DIR`` they are also copied there (``benchmarks/results`` keeps one).
Chromium comes from ``.ci/setup`` (apt); without it these tests are skipped, except in CI
(``CI`` set), where that is a failure."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile

from mmsearch import Index, world
from mmsearch.serve.app import create_app
from mmsearch.serve.server import ServerThread
from mmsearch.serve.settings import ServeSettings

playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect

CHROMIUM = os.environ.get("MMSEARCH_CHROMIUM", "/usr/bin/chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TOKEN = "web-test-token-0123"
SEED = 34  # a world with a single red circle among its scenes


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("web")
    folder = root / "world"
    world.generate_world(folder, 20, SEED, sounds=True)
    rng = np.random.default_rng(SEED)
    scenes = [world.sample_scene(rng) for _ in range(2)]
    soundfile.write(folder / "long.wav", world.compose_recording([None, scenes[0], None, scenes[1]]), world.SAMPLE_RATE)
    world.render_video(folder / "film.mp4", [(scenes[1], 2.0), (scenes[0], 4.0), (scenes[1], 2.0)])
    Index.create(root / "index", model="demo").add([folder], workers=0)
    return {"root": root, "world": folder, "index": root / "index"}


@pytest.fixture(scope="module")
def server(built: dict) -> Iterator[str]:
    settings = ServeSettings(thumb_cache=built["root"] / "thumbs")
    running = ServerThread(create_app(Index.open(built["index"]), settings)).start().wait_ready()
    yield running.url
    running.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not Path(CHROMIUM).is_file():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: .ci/setup installs Debian's chromium")
        pytest.skip(f"no Chromium at {CHROMIUM} (bash .ci/setup installs it)")
    expect.set_options(timeout=30_000)
    with playwright_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser) -> Iterator[object]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    problems: list[str] = []
    opened.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    opened.on(
        "console", lambda m: problems.append(m.text) if m.type == "error" and "status of 400" not in m.text else None
    )
    yield opened
    context.close()
    assert problems == []  # no script errors, no CSP violations, no failed loads


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("screenshots")
    yield folder
    print(f"\nscreenshots of the web page: {folder}")


def keep(page, shots: Path, name: str) -> Path:
    """Screenshot into the test's folder, and into $MMSEARCH_SCREENSHOTS when set."""
    path = shots / f"{name}.png"
    page.screenshot(path=path)
    if os.environ.get("MMSEARCH_SCREENSHOTS"):
        target = Path(os.environ["MMSEARCH_SCREENSHOTS"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target / path.name)
    return path


def api_ids(server: str, **params: object) -> list[int]:
    answer = httpx.get(server + "/api/search", params=params, timeout=60).json()
    return [hit["id"] for hit in answer["results"]]


def card_ids(page) -> list[int]:
    return [int(value) for value in page.locator("#results > li").evaluate_all("cards => cards.map(c => c.dataset.id)")]


def wait_for_images(page) -> None:
    """Every thumbnail on the page has loaded and has pixels."""
    images = page.locator("#results img")
    for number in range(images.count()):
        image = images.nth(number)
        image.scroll_into_view_if_needed()
        expect(image).to_have_js_property("complete", True)
    widths = images.evaluate_all("images => images.map(i => i.naturalWidth)")
    assert widths and all(width > 0 for width in widths)
    page.evaluate("window.scrollTo(0, 0)")


def test_a_shared_url_shows_thumbnails_and_scores(page, server: str, shots: Path) -> None:
    page.goto(server + "/?q=a+red+circle&k=12")
    expect(page.locator("#q")).to_have_value("a red circle")
    expect(page.locator("#results > li")).to_have_count(12)
    assert card_ids(page) == api_ids(server, q="a red circle", k=12)
    wait_for_images(page)
    top = httpx.get(server + "/api/search", params={"q": "a red circle", "k": 1}).json()["results"][0]
    expect(page.locator("#results > li").first.locator(".score")).to_have_text(f"{top['score']:.3f}")
    expect(page.locator("#status")).to_contain_text("images 1–12")
    expect(page.locator("#info")).to_contain_text("model demo")
    keep(page, shots, "serve-page")


def test_more_like_this(page, server: str) -> None:
    page.goto(server + "/?q=a+red+circle&k=12")
    expect(page.locator("#results > li")).to_have_count(12)
    liked = card_ids(page)[0]
    page.locator("#results > li").first.get_by_role("button", name="More like").click()
    expect(page).to_have_url(f"{server}/?modality=image&k=12&like={liked}")
    expect(page.locator("#query-chip")).to_contain_text(f"More like item {liked}")
    expected = api_ids(server, like_id=liked, modality="image", k=12)
    expect(page.locator("#results > li").first).to_have_attribute("data-id", str(expected[0]))
    assert card_ids(page) == expected and liked not in card_ids(page)
    page.go_back()  # the previous search comes back from the URL
    expect(page.locator("#results > li").first).to_have_attribute("data-id", str(liked))


def test_upload_an_image(page, server: str, built: dict) -> None:
    image = built["world"] / "images" / "img_000005.png"
    page.goto(server + "/")
    page.locator("#file").set_input_files(str(image))
    expect(page.locator("#query-chip")).to_contain_text("Searching with img_000005.png")
    expect(page.locator("#results > li").first.locator(".name")).to_have_text("img_000005.png")
    expect(page.locator("#results > li").first.locator(".score")).to_have_text("1.000")
    wait_for_images(page)


def test_sounds_start_at_the_hit_and_texts_show_snippets(page, server: str, shots: Path) -> None:
    page.goto(server + "/?q=a+red+circle&modality=any&k=12")  # images, sounds and texts together
    expect(page.locator("#results > li")).to_have_count(12)
    assert {"image", "audio", "text"} <= set(page.locator("#results > li .badge").all_inner_texts())
    wait_for_images(page)
    keep(page, shots, "serve-page-mixed")
    page.goto(server + "/?q=a+sound&modality=audio&k=48")
    late = page.locator("#results > li.audio", has=page.locator("audio[data-offset='6']"))
    expect(late).to_have_count(1)
    audio = late.locator("audio")
    assert audio.get_attribute("src").endswith("#t=6")
    expect(late.locator(".at")).to_have_text("hit at 6.0 s")
    expect(audio).not_to_have_js_property("readyState", 0)  # metadata loaded through the media route
    assert abs(audio.evaluate("a => a.currentTime") - 6.0) < 0.05
    assert abs(audio.evaluate("a => a.duration") - 8.0) < 0.05
    page.goto(server + "/?q=a+red+circle&modality=text&k=12")
    expect(page.locator("#results > li.text blockquote").first).to_contain_text("red")


def test_a_video_hit_plays_from_its_segment(page, server: str, shots: Path) -> None:
    answer = httpx.get(server + "/api/search", params={"q": "a circle", "modality": "video", "k": 12}, timeout=60)
    hit = answer.json()["results"][0]
    assert hit["modality"] == "video" and hit["start_s"] <= hit["offset_s"] < hit["end_s"]
    page.goto(server + "/?q=a+circle&modality=video&k=12")
    card = page.locator(f"#results > li[data-id='{hit['id']}']")
    video = card.locator("video")
    expect(video).to_have_attribute("data-offset", f"{hit['start_s']:g}")
    assert video.get_attribute("src").endswith(f"#t={hit['start_s']:g}")
    expect(card.locator(".at")).to_contain_text(f"scene {hit['start_s']:.1f}–{hit['end_s']:.1f} s")
    expect(video).to_have_attribute("poster", hit["thumb_url"])  # the best frame, until it plays
    poster = page.request.get(server + hit["thumb_url"])
    assert poster.ok and poster.headers["content-type"] == "image/jpeg"
    keep(page, shots, "serve-page-video")


def test_keyboard_filter_and_paging(page, server: str) -> None:
    page.goto(server + "/")
    expect(page.locator("#q")).to_be_focused()  # an empty page starts in the search box
    page.keyboard.press("Tab")
    expect(page.locator("#q")).not_to_be_focused()
    page.keyboard.press("/")  # and "/" brings any page back to it
    expect(page.locator("#q")).to_be_focused()
    page.keyboard.type("a circle")
    page.keyboard.press("Enter")
    expect(page).to_have_url(f"{server}/?q=a+circle")
    expect(page.locator("#results > li")).to_have_count(20)
    page.locator("#k").select_option("12")
    expect(page).to_have_url(f"{server}/?q=a+circle&k=12")
    expect(page.locator("#results > li")).to_have_count(12)
    first_page = card_ids(page)
    page.locator("#next").click()
    expect(page).to_have_url(f"{server}/?q=a+circle&k=12&offset=12")
    expect(page.locator("#results > li")).to_have_count(8)
    assert first_page + card_ids(page) == api_ids(server, q="a circle", k=20)
    expect(page.locator("#next")).to_be_disabled()
    page.locator("#where").fill("path LIKE '%img_00001%'")
    page.locator("#where").press("Enter")
    expect(page).to_have_url(f"{server}/?q=a+circle&where=path+LIKE+%27%25img_00001%25%27&k=12")
    expect(page.locator("#results > li")).to_have_count(10)
    page.locator("#where").fill("no_such_column > 1")
    page.locator("#where").press("Enter")
    expect(page.locator("#status")).to_contain_text("invalid --where filter")
    expect(page.locator("#status")).to_have_class("error")
    expect(page.locator("#results > li")).to_have_count(0)


def test_a_token_server_asks_for_the_token(browser, built: dict, shots: Path) -> None:
    settings = ServeSettings(token=TOKEN, thumb_cache=built["root"] / "thumbs")
    with ServerThread(create_app(Index.open(built["index"]), settings)) as running:
        running.wait_ready()
        context = browser.new_context()
        page = context.new_page()
        page.goto(running.url + "/?q=a+red+circle&k=12")
        expect(page.locator("#token-panel")).to_be_visible()
        page.locator("#token").fill("not-the-token")
        page.locator("#token-form button").click()
        expect(page.locator("#status")).to_contain_text("not accepted")
        page.locator("#token").fill(TOKEN)
        page.locator("#token-form button").click()
        expect(page.locator("#token-panel")).to_be_hidden()
        expect(page.locator("#results > li")).to_have_count(12)
        wait_for_images(page)  # thumbnails load through signed links, without the header
        expect(page.locator("#info")).to_contain_text("model demo")
        context.close()


def test_a_phone_sized_screen(browser, server: str, shots: Path) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True)
    page = context.new_page()
    page.goto(server + "/?q=a+red+circle&modality=any&k=12")
    expect(page.locator("#results > li")).to_have_count(12)
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    columns = page.locator("#results").evaluate("grid => getComputedStyle(grid).gridTemplateColumns.split(' ').length")
    assert columns == 2
    keep(page, shots, "serve-page-phone")
    context.close()
