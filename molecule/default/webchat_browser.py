"""Drive the web chat in real headless Chromium (Debian's chromium + chromium-driver via selenium).

English UI: ask in English and in Chinese, see each answer stream in (several token events) with its
source, reload and find the conversation, press "talk to a person" and get the handoff answer. A
second browser with a Chinese locale gets the Chinese UI. A shop page served on loopback embeds the
widget with one script tag: on a listed origin it answers, on an unlisted one the service refuses it.
Every response body Chromium received is searched for the API key (given in the environment, never
on the command line). Screenshots go to --out. Prints one JSON line of figures; exits 1 with the
reason on any failed check.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import http.server
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

WAIT = 30


class Failed(Exception):
    pass


def check(condition: bool, message: str) -> None:
    if not condition:
        raise Failed(message)


def spki_pin(cert_file: Path) -> str:
    """base64(sha256(SubjectPublicKeyInfo)): Chromium then trusts exactly this certificate's key."""
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


@contextlib.contextmanager
def chromium(args: argparse.Namespace, lang: str) -> Iterator[WebDriver]:
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never download a browser or driver
    options = webdriver.ChromeOptions()
    options.binary_location = args.chromium
    with tempfile.TemporaryDirectory(prefix="webchat-chromium-") as profile:
        for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,900",
                     "--no-proxy-server", "--no-first-run", f"--user-data-dir={profile}", f"--lang={lang}"):
            options.add_argument(flag)
        rules = [f"MAP {urlsplit(o).hostname} 127.0.0.1" for o in (args.shop_origin, args.foreign_origin)]
        if args.resolve:
            host, address = args.resolve.split(":", 1)
            rules.append(f"MAP {host} {address}")
        options.add_argument("--host-resolver-rules=" + ", ".join(rules))
        if args.cert:
            options.add_argument(f"--ignore-certificate-errors-spki-list={spki_pin(Path(args.cert))}")
        options.add_experimental_option("prefs", {"intl.accept_languages": lang})
        options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
        driver = webdriver.Chrome(options=options, service=Service(executable_path=args.chromedriver))
        try:
            driver.execute_cdp_cmd("Network.enable", {"maxResourceBufferSize": 10_000_000,
                                                      "maxTotalBufferSize": 50_000_000})
            yield driver
        finally:
            driver.quit()


def wait_for(driver: WebDriver, what: str, predicate: Callable[[WebDriver], Any], timeout: float = WAIT) -> Any:
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.05).until(predicate)
    except Exception as exc:
        raise Failed(f"timed out waiting for {what}") from exc


def assistant_messages(root: Any) -> list[Any]:
    return root.find_elements(By.CSS_SELECTOR, ".cs-assistant")


def ask(driver: WebDriver, text: str | None, button: str | None = None, root: Any = None) -> dict[str, Any]:
    """Send by typing + Enter (keyboard path) or by pressing a button; wait for the streamed answer.
    `root` is the widget's shadow root (default: the page)."""
    root = root or driver
    before = len(assistant_messages(root))
    started = time.perf_counter()
    if button:
        root.find_element(By.CSS_SELECTOR, button).click()
    else:
        box = root.find_element(By.CSS_SELECTOR, ".cs-input")
        box.send_keys(text)
        box.send_keys(Keys.ENTER)
    wait_for(driver, "the answer to start streaming", lambda d: len(assistant_messages(root)) > before)
    item = assistant_messages(root)[before]
    wait_for(driver, "the first token", lambda d: int(item.get_attribute("data-tokens") or 0) > 0)
    first_token = time.perf_counter() - started
    wait_for(driver, "the answer to finish", lambda d: item.get_attribute("data-state") in ("done", "failed"))
    check(item.get_attribute("data-state") == "done", f"answer to {text!r} failed: {item.text}")
    return {
        "question": text or button, "answer": item.find_element(By.CSS_SELECTOR, ".cs-text").text,
        "intent": item.get_attribute("data-intent"), "tokens": int(item.get_attribute("data-tokens")),
        "sources": [s.text for s in item.find_elements(By.CSS_SELECTOR, ".cs-source")],
        "first_token_s": round(first_token, 3), "total_s": round(time.perf_counter() - started, 3),
    }


def conversation(driver: WebDriver) -> list[str]:
    """Every message with its sources, as the reader sees them."""
    return [m.text for m in driver.find_elements(By.CSS_SELECTOR, ".cs-msg")]


def bodies(driver: WebDriver) -> list[tuple[str, str]]:
    """(url, body) of every response Chromium received, from the DevTools network log."""
    seen: list[tuple[str, str]] = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] != "Network.responseReceived":
            continue
        params = message["params"]
        try:
            body = driver.execute_cdp_cmd("Network.getResponseBody", {"requestId": params["requestId"]})
        except Exception:
            body = {"body": ""}  # evicted or never buffered; its text is in the DOM anyway
        text = base64.b64decode(body["body"]).decode("utf-8", "replace") if body.get("base64Encoded") else body["body"]
        seen.append((params["response"]["url"], text + json.dumps(params["response"].get("headers", {}))))
    return seen


def console_clean(driver: WebDriver) -> None:
    """The page runs under its Content-Security-Policy without a single violation."""
    refused = [e["message"] for e in driver.get_log("browser") if "Content Security Policy" in e["message"]]
    check(not refused, f"CSP violations: {refused}")


def shot(driver: WebDriver, out: Path, name: str, shots: list[str]) -> None:
    path = out / f"{name}.png"
    driver.save_screenshot(str(path))
    shots.append(str(path))


def english_session(driver: WebDriver, args: argparse.Namespace, out: Path, shots: list[str],
                    downloaded: list[tuple[str, str]]) -> dict[str, Any]:
    started = time.perf_counter()
    driver.get(args.url)
    wait_for(driver, "the chat to mount", lambda d: d.find_elements(By.CSS_SELECTOR, ".cs-chat"))
    load_s = time.perf_counter() - started
    check(driver.execute_script("return document.documentElement.lang") == "en", "English UI for an English browser")
    check(driver.find_element(By.CSS_SELECTOR, ".cs-title").text == "Customer service", "English title")
    box = driver.find_element(By.CSS_SELECTOR, ".cs-input")
    label = driver.find_element(By.CSS_SELECTOR, f"label[for='{box.get_attribute('id')}']")
    check(label.text == "Your message", "the input has a visible label")
    check(driver.switch_to.active_element == box, "focus starts in the message box")
    check(driver.find_element(By.CSS_SELECTOR, ".cs-log").get_attribute("role") == "log", "the log is a live region")

    en = ask(driver, "How long does delivery take?")
    zh = ask(driver, "怎么退货？")
    shot(driver, out, "1-en-asked-en-and-zh", shots)
    for turn in (en, zh):
        check(turn["tokens"] > 1, f"{turn['question']!r}: answer arrived in {turn['tokens']} token event(s), not streamed")
        check(turn["sources"], f"{turn['question']!r}: no source shown")
    check(any("\u4e00" <= ch <= "\u9fff" for ch in zh["answer"]), "Chinese question gets a Chinese answer")
    before = conversation(driver)

    downloaded += bodies(driver)
    driver.refresh()
    wait_for(driver, "the conversation after reload",
             lambda d: len(d.find_elements(By.CSS_SELECTOR, ".cs-msg")) == len(before))
    after = conversation(driver)
    check(after == before, f"conversation differs after reload: {after} != {before}")
    shot(driver, out, "2-en-after-reload", shots)

    human = ask(driver, None, button=".cs-human")
    check(human["intent"] == "handoff", f"talk to a person gave intent {human['intent']}")
    check("human" in human["answer"].lower(), f"handoff answer: {human['answer']!r}")
    shot(driver, out, "3-en-talk-to-a-person", shots)
    console_clean(driver)
    storage = driver.execute_script("return JSON.stringify(Object.assign({}, localStorage))")
    downloaded += bodies(driver) + [("localStorage", storage), ("DOM", driver.page_source)]
    return {"page_load_s": round(load_s, 3), "turns": [en, zh, human], "messages_after_reload": len(after)}


def chinese_session(driver: WebDriver, args: argparse.Namespace, out: Path, shots: list[str],
                    downloaded: list[tuple[str, str]]) -> dict[str, Any]:
    driver.get(args.url)
    wait_for(driver, "the chat to mount", lambda d: d.find_elements(By.CSS_SELECTOR, ".cs-chat"))
    check(driver.execute_script("return document.documentElement.lang") == "zh-CN", "Chinese UI for a Chinese browser")
    check(driver.find_element(By.CSS_SELECTOR, ".cs-title").text == "在线客服", "Chinese title")
    check(driver.find_element(By.CSS_SELECTOR, ".cs-human").text == "转人工", "Chinese handoff button")
    check(not driver.find_elements(By.CSS_SELECTOR, ".cs-msg"), "a new browser starts a new conversation")
    turn = ask(driver, "怎么开发票")
    check(turn["sources"] and turn["tokens"] > 1, f"Chinese UI answer: {turn}")
    human = ask(driver, None, button=".cs-human")
    check(human["intent"] == "handoff" and "人工" in human["answer"], f"Chinese handoff: {human}")
    shot(driver, out, "4-zh-ui", shots)
    console_clean(driver)
    downloaded += bodies(driver) + [("DOM", driver.page_source)]
    return {"turns": [turn, human]}


SHOP_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>A shop</title></head>
<body><h1>A shop that embeds the chat</h1><p>One script tag below.</p>
<script src="{chat}chat.js" async></script></body></html>"""


@contextlib.contextmanager
def shop_site(port: int, chat_dir: str) -> Iterator[None]:
    """A shop's site on loopback (any Host name): one page with the widget's script tag."""
    page = SHOP_PAGE.format(chat=chat_dir).encode()

    class Shop(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self.send_response(200 if self.path == "/" else 404)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.end_headers()
            if self.path == "/":
                self.wfile.write(page)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Shop)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


def widget(driver: WebDriver, shop: str) -> Any:
    driver.get(shop)
    host = wait_for(driver, "the widget on the shop page",
                    lambda d: d.find_elements(By.CSS_SELECTOR, "#chatstack-widget"))[0]
    root = host.shadow_root
    launcher = wait_for(driver, "the widget's button", lambda d: root.find_elements(By.CSS_SELECTOR, ".cs-launcher"))[0]
    check(launcher.get_attribute("aria-expanded") == "false", "the widget starts closed")
    launcher.click()
    check(launcher.get_attribute("aria-expanded") == "true", "the button opens the panel")
    return root


def widget_sessions(driver: WebDriver, args: argparse.Namespace, out: Path, shots: list[str]) -> dict[str, Any]:
    root = widget(driver, args.shop_origin + "/")
    check(root.find_element(By.CSS_SELECTOR, ".cs-launcher").text == "Chat with us", "English widget button")
    turn = ask(driver, "How do I get an invoice?", root=root)
    check(turn["sources"] and turn["tokens"] > 1, f"widget answer: {turn}")
    shot(driver, out, "5-widget-on-listed-shop", shots)
    root.find_element(By.CSS_SELECTOR, ".cs-input").send_keys(Keys.ESCAPE)
    check(root.find_element(By.CSS_SELECTOR, ".cs-launcher").get_attribute("aria-expanded") == "false",
          "Escape closes the widget")

    root = widget(driver, args.foreign_origin + "/")
    box = root.find_element(By.CSS_SELECTOR, ".cs-input")
    box.send_keys("How do I get an invoice?")
    box.send_keys(Keys.ENTER)
    status = root.find_element(By.CSS_SELECTOR, ".cs-status")
    wait_for(driver, "the refusal on an unlisted origin", lambda d: status.text)
    check(not assistant_messages(root), "an unlisted origin got an answer")
    shot(driver, out, "6-widget-on-unlisted-origin-refused", shots)
    return {"listed_origin_turn": turn, "unlisted_origin_status": status.text}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--url", required=True, help="the chat page, e.g. https://chat.default.test/chat/")
    p.add_argument("--resolve", help="HOST:ADDRESS, as curl --resolve without the port")
    p.add_argument("--cert", help="PEM certificate the site serves (pinned by its public key)")
    p.add_argument("--out", required=True, help="directory for screenshots and the summary")
    p.add_argument("--secret-env", default="WEBCHAT_API_KEY", help="environment variable holding the API key")
    p.add_argument("--shop-origin", default="http://shop.default.test:8099",
                   help="a listed origin served on loopback with the widget's script tag")
    p.add_argument("--foreign-origin", default="http://elsewhere.default.test:8099", help="an origin not listed")
    p.add_argument("--chromium", default="/usr/bin/chromium")
    p.add_argument("--chromedriver", default="/usr/bin/chromedriver")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    secret = os.environ.get(args.secret_env, "")
    shots: list[str] = []
    downloaded: list[tuple[str, str]] = []
    started = time.perf_counter()
    try:
        check(len(secret) >= 16, f"{args.secret_env} must hold the API key to look for")
        with chromium(args, "en-US") as driver:
            version = driver.capabilities.get("browserVersion")
            english = english_session(driver, args, out, shots, downloaded)
        with chromium(args, "zh-CN") as driver:
            chinese = chinese_session(driver, args, out, shots, downloaded)
        with shop_site(urlsplit(args.shop_origin).port or 80, urljoin(args.url, "./")), chromium(args, "en-US") as driver:
            embedded = widget_sessions(driver, args, out, shots)
            downloaded += bodies(driver)
        leaks = sorted({url for url, body in downloaded if secret in body})
        check(not leaks, f"the API key appears in what the browser downloaded: {leaks}")
        static = sorted({url for url, _ in downloaded if "/chat/" in url})
        check(len(static) >= 3, f"expected the page, chat.js and chat.css among downloads, got {static}")
    except Failed as exc:
        print(f"WEBCHAT BROWSER FAILED: {exc}", file=sys.stderr)
        return 1
    summary = {
        "chromium": version, "screenshots": shots, "english": english, "chinese": chinese, "widget": embedded,
        "responses_searched_for_api_key": len(downloaded), "static_files": static,
        "elapsed_s": round(time.perf_counter() - started, 1),
    }
    (out / "summary.json").write_text(json.dumps(summary, ensure_ascii=False, indent=1))
    print(json.dumps(summary, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
