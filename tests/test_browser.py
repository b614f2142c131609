"""The demo journey in a real browser: headless Chromium pays and refunds an order, as a buyer would.

The demo (``examples/demo.py``: the shop and ``alipay_middleware.simulator`` on two loopback ports) is
started on free ports; Chromium opens the shop, presses "Pay with Alipay", presses ``#pay`` on the
simulator's checkout, lands on the shop's return page, follows it to the order page and waits until the
payment notification has turned it "paid"; then it presses "Refund" and waits for "refunded". Run against
the Flask shop and the FastAPI shop (uvicorn in a thread). A second test looks at the simulator's own
pages (fault lines, the saved line, one-line cells with dated times, paid and closed checkouts).

Screenshots of every step are kept in ``$ALIPAY_TEST_ARTIFACTS/browser/<shop>/`` or, without that
variable, in ``test-artifacts/browser/<shop>/`` at the repository root (git-ignored), overwritten by
each run.

Needs playwright for Python (the ``test`` extra) and Debian's Chromium (``/usr/bin/chromium``, or the
path in ``CHROMIUM``; ``.ci/run`` installs it): playwright's own browser downloads are not used. Where
either is missing the test is skipped with the reason, unless ``CI`` is set: then it fails.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))

import demo  # noqa: E402

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WAIT_MS = 20_000  # for a notification: the simulator sends it at once, the page refreshes every 2 s

pytestmark = pytest.mark.slow


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so the browser test must run; .ci/run installs both)")
    pytest.skip(reason)


def _chromium() -> str:
    path = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not os.access(path, os.X_OK):
        _unavailable(f"no Chromium at {path} (apt-get install chromium, or set CHROMIUM)")
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install -e '.[test]')")
    executable = _chromium()
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def _artifacts(shop: str) -> Path:
    base = Path(os.environ.get("ALIPAY_TEST_ARTIFACTS") or ROOT / "test-artifacts")
    directory = base / "browser" / shop
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    return directory


@pytest.mark.parametrize("shop", demo.SHOPS)
def test_a_buyer_pays_and_gets_a_refund_in_chromium(browser: Any, state_dir: Path, shop: str) -> None:
    from playwright.sync_api import expect

    shots = _artifacts(shop)
    with demo.Demo(state_dir, shop=shop, port=0, simulator_port=0, quiet=True) as running:
        context = browser.new_context(viewport={"width": 900, "height": 700})
        page = context.new_page()
        page.set_default_timeout(WAIT_MS)
        failures: list[str] = []
        page.on("response", lambda r: failures.append(f"{r.status} {r.url}") if r.status >= 500 else None)
        step = iter(range(1, 100))

        def shot(name: str) -> None:
            page.screenshot(path=str(shots / f"{next(step):02d}-{name}.png"), full_page=True)

        try:
            page.goto(f"{running.url}/")
            expect(page.locator("h1")).to_have_text("Tea shop")
            shot("shop")

            page.get_by_role("button", name="Pay with Alipay").first.click()
            page.wait_for_url(lambda url: url.startswith(f"{running.simulator_server.url}/checkout/"))
            expect(page.locator("body")).to_contain_text("Longjing green tea")
            expect(page.locator("body")).to_contain_text("9.90")
            shot("checkout")

            page.click("#pay")
            page.wait_for_url(lambda url: url.startswith(f"{running.url}{running.alipay.return_path}?"))
            # Verified; "waiting" until the notification is in (it may come after the buyer).
            assert page.locator("#return").get_attribute("data-state") in ("waiting", "paid")
            shot("return")

            page.click("#order-link")
            expect(page.locator("#status")).to_have_text("paid", timeout=WAIT_MS)  # the page refreshes
            shot("paid")

            # A buyer takes longer than a test to find the button: by then the payment's notification is
            # settled (a refund's arriving while the paid hook finishes gets 503, resent minutes later).
            assert running.simulator.wait_idle(10)
            page.click("#refund")  # the form offers the whole amount
            expect(page.locator("#status")).to_have_text("refunded", timeout=WAIT_MS)
            expect(page.locator("#refunded")).to_contain_text("¥9.90 of ¥9.90")
            shot("refunded")
        except Exception as exc:
            shot("failure")
            sent = "\n".join(f"  {d.fields.get('trade_status')} out_biz_no={d.fields.get('out_biz_no', '')} "
                             f"attempt {d.attempt}: {d.status} {d.answer[:40]!r}"
                             for d in running.simulator.deliveries())
            raise AssertionError(f"{exc}\nnotifications the simulator sent:\n{sent}") from exc
        finally:
            context.close()

        assert failures == [], "no page may answer a server error"
        trade = running.simulator.trades()[0]
        assert (trade.status, trade.refunded_amount) == ("TRADE_CLOSED", trade.total_amount)
    assert sorted(p.name for p in shots.iterdir()) == [
        "01-shop.png", "02-checkout.png", "03-return.png", "04-paid.png", "05-refunded.png"]


#: Text nodes of the cells matched by the selector that the browser laid out on more than one line.
_WRAPPED = """(selector) => {
  const wrapped = [];
  for (const cell of document.querySelectorAll(selector)) {
    const walker = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      const range = document.createRange();
      range.selectNodeContents(node);
      if (range.getClientRects().length > 1) wrapped.push(node.textContent);
    }
  }
  return wrapped;
}"""
TIME = r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\+08:00$"


def test_the_simulator_pages_in_chromium(browser: Any, state_dir: Path) -> None:
    """The simulator's own pages as a developer sees them: each fault switch explained and a save
    confirmed, table cells on one line (``success`` included) with dated +08:00 times, and the checkout of
    a paid or closed trade showing its state and a way back instead of Pay/Cancel."""
    import re

    from playwright.sync_api import expect

    from alipay_middleware.simulator import Faults

    shots = _artifacts("simulator-pages")
    with demo.Demo(state_dir, shop="flask", port=0, simulator_port=0, quiet=True) as running:
        sim_url = running.simulator_server.url
        context = browser.new_context(viewport={"width": 900, "height": 700})
        page = context.new_page()
        page.set_default_timeout(WAIT_MS)
        step = iter(range(1, 100))

        def shot(name: str) -> None:
            page.screenshot(path=str(shots / f"{next(step):02d}-{name}.png"), full_page=True)

        try:
            page.goto(f"{running.url}/")
            page.get_by_role("button", name="Pay with Alipay").first.click()
            page.wait_for_url(lambda url: url.startswith(f"{sim_url}/checkout/"))
            paid_checkout = page.url
            page.click("#pay")
            page.wait_for_url(lambda url: url.startswith(f"{running.url}{running.alipay.return_path}?"))
            assert running.simulator.wait_idle(10)  # the notification answered `success`

            page.goto(f"{running.url}/")
            page.get_by_role("button", name="Pay with Alipay").first.click()
            page.wait_for_url(lambda url: url.startswith(f"{sim_url}/checkout/"))
            closed_checkout = page.url
            page.click("#timeout")
            expect(page.locator("#trade-status")).to_have_text("TRADE_CLOSED")

            page.goto(f"{sim_url}/")
            for name in Faults.names():
                expect(page.locator(f"#fault-{name}-help")).to_have_text(Faults.explain(name))
            expect(page.locator("#faults-saved")).to_have_count(0)
            page.check("#fault-duplicate_notify")
            page.click("#save-faults")
            expect(page.locator("#faults-saved")).to_have_text(
                "Saved: duplicate notify is on; the others are off.")
            expect(page.locator("#fault-duplicate_notify")).to_be_checked()
            shot("admin-saved")
            page.uncheck("#fault-duplicate_notify")
            page.click("#save-faults")
            expect(page.locator("#faults-saved")).to_have_text("Saved: every fault is off.")

            created = page.locator("#orders tr td:nth-child(9)").all_inner_texts()
            sent_at = page.locator("#deliveries tr td:nth-child(1)").all_inner_texts()
            assert len(created) == 2 and sent_at, (created, sent_at)
            assert all(re.fullmatch(TIME, text) for text in created + sent_at), (created, sent_at)
            answers = page.locator("#deliveries tr td:nth-child(9)").all_inner_texts()
            assert "success" in answers
            assert page.evaluate(_WRAPPED, "#orders td:not(.text), #deliveries td:not(.text)") == []
            assert page.evaluate(_WRAPPED, "#deliveries td:nth-child(9)") == []  # `success` on one line

            page.goto(paid_checkout)
            expect(page.locator("#trade-status")).to_have_text("TRADE_SUCCESS")
            expect(page.locator("#pay")).to_have_count(0)
            expect(page.locator("#cancel")).to_have_count(0)
            shot("paid-checkout")
            page.click("#back")
            expect(page.locator("h1")).to_have_text("Tea shop")

            page.goto(closed_checkout)
            expect(page.locator("#trade-status")).to_have_text("TRADE_CLOSED")
            expect(page.locator("#pay")).to_have_count(0)
            shot("closed-checkout")
        except Exception:
            shot("failure")
            raise
        finally:
            context.close()
