"""`transferkit ui` in headless Chromium, against a real registry of real experts, on SQLite and PostgreSQL:
the experts table sorts, filters and pages; an expert page shows its metrics, gate heatmap and lineage graph, and
clicking a parent in the graph opens it; the cost page's totals are `transferkit cost --json`'s; tasks, compare
and runs pages show what the registry holds; the sign-in form lets a browser in. Every page is screenshotted."""

from __future__ import annotations

import json
import subprocess

from cli_helpers import EXECUTABLE
from ui_helpers import TOKEN, screenshot
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import Select, WebDriverWait

import transferkit
from transferkit.accounting import COST_FIELDS, GROUPINGS


def rows(driver) -> list:
    return driver.find_elements(By.CSS_SELECTOR, "#experts tbody tr[data-id]")


def column(driver, name: str) -> list[str]:
    return [cell.get_attribute("data-value") or cell.text for cell in driver.find_elements(By.CSS_SELECTOR, f"#experts td.c-{name}")]


def wait_for_url(driver, fragment: str) -> None:
    WebDriverWait(driver, 60).until(expected_conditions.url_contains(fragment))


def test_experts_table_sorts_filters_and_pages(ui, browser):
    with transferkit.Registry(ui.registry, artifacts=ui.artifacts, read_only=True) as registry:
        everything = {e.name: e for e in registry.experts(limit=100)}
    browser.get(f"{ui.base}/experts")
    assert len(rows(browser)) == len(everything) == 8
    assert browser.find_element(By.ID, "expert-count").text == "8 experts"
    screenshot(browser, ui.backend, "experts")

    browser.find_element(By.CSS_SELECTOR, 'a[data-sort="params"]').click()  # numbers sort largest first
    wait_for_url(browser, "sort=-params")
    params = [int(v) for v in column(browser, "params")]
    assert params == sorted((e.record.trainable_params for e in everything.values()), reverse=True)
    browser.find_element(By.CSS_SELECTOR, 'a[data-sort="params"]').click()  # a second click turns it around
    wait_for_url(browser, "sort=params")
    assert [int(v) for v in column(browser, "params")] == sorted(params)
    browser.find_element(By.CSS_SELECTOR, 'a[data-sort="dev"]').click()
    wait_for_url(browser, "sort=-dev")
    dev = [float(v) for v in column(browser, "dev")]
    assert dev == sorted(dev, reverse=True)

    search = browser.find_element(By.NAME, "q")
    search.clear()
    search.send_keys("pemt")
    browser.find_element(By.CSS_SELECTOR, "#expert-filters button[type=submit]").click()
    wait_for_url(browser, "q=pemt")
    assert sorted(r.find_element(By.CSS_SELECTOR, ".c-name a").text for r in rows(browser)) == ["g1-cb-pemt-s1", "g1-cb-pemt-s2"]
    assert column(browser, "strategy") == ["pemt", "pemt"] and browser.find_element(By.ID, "expert-count").text == "2 experts"

    browser.get(f"{ui.base}/experts?task=rte&tag=stage%3Dprod")  # a bare task name and a key=value tag
    assert [r.find_element(By.CSS_SELECTOR, ".c-name a").text for r in rows(browser)] == ["rte-lora"]
    assert "@nli" in browser.find_element(By.CSS_SELECTOR, "#experts .c-labels").text

    browser.get(f"{ui.base}/experts?sort=name&per_page=5")
    first = [r.find_element(By.CSS_SELECTOR, ".c-name a").text for r in rows(browser)]
    browser.find_element(By.CSS_SELECTOR, "a[rel=next]").click()
    wait_for_url(browser, "page=2")
    second = [r.find_element(By.CSS_SELECTOR, ".c-name a").text for r in rows(browser)]
    assert (len(first), len(second)) == (5, 3) and first + second == sorted(everything)
    assert browser.find_element(By.CSS_SELECTOR, ".pager .where").text == "page 2 of 2"


def test_expert_page_shows_metrics_gates_and_a_lineage_graph_that_navigates(ui, browser):
    with transferkit.Registry(ui.registry, artifacts=ui.artifacts, read_only=True) as registry:
        pemt = registry.get(ui.ids["pemt"]).record
        parents = {edge.parent_id: edge for edge in registry.store.lineage_edges(pemt.id)["parents"]}
        names = {expert_id: registry.get(expert_id).name for expert_id in parents}
    browser.get(f"{ui.base}/experts/{pemt.id}")
    assert browser.find_element(By.ID, "expert-name").text.startswith(pemt.name)
    assert browser.find_element(By.ID, "verification").text == "verified"
    primary = pemt.metrics["primary"]
    for split in ("dev", "test"):
        cell = browser.find_element(By.CSS_SELECTOR, f'#metrics tr[data-metric="{primary}"] td[data-split="{split}"]')
        assert float(cell.get_attribute("data-value")) == pemt.metrics[split][primary]

    gates = pemt.extra["gate_weights"]
    layers, sources = list(gates["per_layer"]), gates["sources"]
    columns = len(sources) + ("zero_expert" in gates)
    cells = browser.find_elements(By.CSS_SELECTOR, "#gate-heatmap g.cell")
    assert len(cells) == len(layers) * columns == 2 * columns  # the tiny BERT's two layers
    for cell in cells:
        i, j = int(cell.get_attribute("data-row")), int(cell.get_attribute("data-col"))
        expected = gates["per_layer"][layers[i]][j] if j < len(sources) else gates["zero_expert"]["per_layer"][layers[i]]
        assert float(cell.get_attribute("data-value")) == expected

    graph = browser.find_element(By.ID, "lineage-graph")
    nodes = {node.get_attribute("data-id"): node for node in graph.find_elements(By.CSS_SELECTOR, "a.node")}
    assert set(nodes) == {pemt.id, *parents}
    edges = graph.find_elements(By.CSS_SELECTOR, "g.edge")
    assert {(e.get_attribute("data-parent"), e.get_attribute("data-role"), float(e.get_attribute("data-weight"))) for e in edges} == {
        (p, edge.role, edge.weight) for p, edge in parents.items()}
    assert all(len(e.get_attribute("data-data")) == 64 for e in edges)  # the child's data fingerprint on every edge
    screenshot(browser, ui.backend, "expert")

    parent_id = next(p for p in parents if names[p] == "rte-lora")
    ActionChains(browser).move_to_element(nodes[parent_id]).perform()  # ui.js: highlight and the detail panel
    detail = browser.find_element(By.ID, "graph-detail")
    WebDriverWait(browser, 30).until(lambda _: detail.is_displayed())
    assert "rte-lora" in detail.text
    nodes[parent_id].click()
    wait_for_url(browser, f"/experts/{parent_id}")
    assert browser.find_element(By.ID, "expert-name").text.startswith("rte-lora")
    children = browser.find_elements(By.CSS_SELECTOR, '#lineage-graph g.edge')
    assert {c.get_attribute("data-role") for c in children} == {"source", "init"}  # the pemt and spot cells built on it
    screenshot(browser, ui.backend, "expert-source")


def test_tables_forms_and_the_graph_work_without_javascript(ui, browser_without_js):
    driver = browser_without_js
    driver.get(f"{ui.base}/experts/{ui.ids['pemt']}")
    assert not driver.find_element(By.CSS_SELECTOR, ".graph-tools").is_displayed()  # ui.js did not run
    driver.find_element(By.CSS_SELECTOR, f'#lineage-graph a.node[data-id="{ui.ids["rte"]}"]').click()  # plain SVG links
    wait_for_url(driver, f"/experts/{ui.ids['rte']}")
    driver.get(f"{ui.base}/experts?per_page=10")
    driver.find_element(By.CSS_SELECTOR, 'a[data-sort="name"]').click()
    wait_for_url(driver, "sort=name")
    names = [r.find_element(By.CSS_SELECTOR, ".c-name a").text for r in rows(driver)]
    assert len(names) == 8 and names == sorted(names)
    search = driver.find_element(By.NAME, "q")
    search.send_keys("spot")
    search.submit()
    wait_for_url(driver, "q=spot")
    assert len(rows(driver)) == 2
    driver.get(f"{ui.base}/cost")
    Select(driver.find_element(By.NAME, "by")).select_by_value("method")
    driver.find_element(By.CSS_SELECTOR, "#cost-filters button[type=submit]").click()
    wait_for_url(driver, "by=method")
    assert driver.find_element(By.ID, "cost-groups").get_attribute("data-by") == "method"


def test_cost_page_totals_equal_cost_json(ui, browser):
    for by in GROUPINGS:
        browser.get(f"{ui.base}/cost?by={by}")
        if by == "task":
            screenshot(browser, ui.backend, "cost")
        shown = {}
        for row in browser.find_elements(By.CSS_SELECTOR, "#cost-groups tr.group"):
            values = {kind: {f: row.get_attribute(f"data-{kind}-{f}") for f in COST_FIELDS} for kind in ("own", "amortized")}
            shown[row.get_attribute("data-group")] = (int(row.get_attribute("data-experts")), values)
        result = subprocess.run([EXECUTABLE, "--registry", ui.registry, "cost", "--by", by, "--json"],
                                env=ui.env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        groups = json.loads(result.stdout)["groups"]
        assert set(shown) == {g["group"] for g in groups} and groups
        for group in groups:
            experts, values = shown[group["group"]]
            assert experts == group["experts"]
            for kind in ("own", "amortized"):
                for field in COST_FIELDS:
                    expected = group[kind][field]
                    assert (float(values[kind][field]) if values[kind][field] else None) == expected, (by, group["group"], kind, field)


def test_tasks_compare_and_runs_pages(ui, browser):
    browser.get(f"{ui.base}/tasks")
    tasks = [row.get_attribute("data-task") for row in browser.find_elements(By.CSS_SELECTOR, "#tasks tbody tr[data-task]")]
    assert tasks == ["glue/mrpc", "glue/rte", "superglue/cb", "team/reviews"]
    assert len(browser.find_elements(By.CSS_SELECTOR, "#similarity g.cell")) == 16
    cb = browser.find_element(By.CSS_SELECTOR, '#tasks tr[data-task="superglue/cb"]')
    assert cb.find_element(By.CSS_SELECTOR, ".c-count").text == "6"
    custom = browser.find_element(By.CSS_SELECTOR, '#tasks tr[data-task="team/reviews"]')
    assert [cell.text for cell in custom.find_elements(By.TAG_NAME, "td")[1:6]] == ["custom", "text", "negative, positive", "accuracy", "0"]
    assert "glue/sst2" in browser.find_element(By.ID, "catalog-missing").text  # catalog tasks with no expert here yet
    screenshot(browser, ui.backend, "tasks")

    browser.get(f"{ui.base}/compare")
    grid = browser.find_element(By.ID, "grid-g1")
    table = grid.find_elements(By.CSS_SELECTOR, "table.grid-table tbody tr")
    assert {r.get_attribute("data-arm") for r in table} == {"scratch", "spot", "pemt"}
    assert all("[" in r.find_elements(By.TAG_NAME, "td")[3].text for r in table)  # every score with its 95% interval
    assert len(grid.find_elements(By.CSS_SELECTOR, "svg g.bar")) == 3
    screenshot(browser, ui.backend, "compare")
    browser.find_element(By.CSS_SELECTOR, '#compare-pick input[name="arm"][value="pemt"]').click()
    browser.find_element(By.CSS_SELECTOR, "#compare-pick button[type=submit]").click()
    wait_for_url(browser, "arm=pemt")
    assert [r.get_attribute("data-arm") for r in browser.find_elements(By.CSS_SELECTOR, "#grid-g1 table.grid-table tbody tr")] == ["pemt"]

    browser.get(f"{ui.base}/runs")
    shown = {row.get_attribute("data-state"): row for row in browser.find_elements(By.CSS_SELECTOR, "#runs tbody tr[data-run]")}
    assert set(shown) == {"alive", "failed", "interrupted"}  # the fixture process's run, the failed and the stopped one
    assert "training diverged at step 3" in shown["failed"].text
    assert shown["interrupted"].find_element(By.CSS_SELECTOR, ".resume").text == \
        "resume with: transferkit train-source qnli --resume"
    assert shown["alive"].find_element(By.CSS_SELECTOR, ".resume").text == ""  # its process is still there
    screenshot(browser, ui.backend, "runs")


def test_a_browser_signs_in_with_the_token(locked_ui, browser):
    try:
        browser.delete_all_cookies()
        browser.get(f"{locked_ui.base}/experts?sort=name")
        assert browser.title.startswith("Sign in") and not rows(browser)
        screenshot(browser, locked_ui.backend, "sign-in")
        browser.find_element(By.NAME, "token").send_keys("not-the-token-but-long-enough")
        browser.find_element(By.CSS_SELECTOR, "form.login button").click()
        error = WebDriverWait(browser, 60).until(expected_conditions.presence_of_element_located((By.ID, "login-error")))
        assert error.is_displayed()
        browser.find_element(By.NAME, "token").send_keys(TOKEN)
        browser.find_element(By.CSS_SELECTOR, "form.login button").click()
        wait_for_url(browser, "/experts?sort=name")  # back where the browser was going
        assert len(rows(browser)) == 8
        cookie = browser.get_cookies()[0]
        assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict" and TOKEN not in cookie["value"]
    finally:
        browser.delete_all_cookies()
