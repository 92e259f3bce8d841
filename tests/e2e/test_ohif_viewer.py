"""The real OHIF viewer (v3: the built app of the npm package ``@ohif/app``) in
headless Chromium against a real ``radhub serve``.

OHIF is served from a loopback origin of its own with the ``app-config.js`` a site
would deploy against a DICOMweb archive: its OpenID Connect client (oidc-client-ts:
discovery, code flow with PKCE, token exchange, renewal) signs the user in at radhub,
and its DICOMweb data source sends the bearer token on every QIDO-RS and WADO-RS
call, so the browser makes real CORS requests and preflights. The test signs in and
consents on radhub's pages like a user, checks the study list against the studies
stored through STOW-RS, opens one and waits for its pixels on the viewport.

The app is a test peer like Chromium: ``RADHUB_OHIF_DIST`` or the cache directory that
``python3 tests/e2e/ohif_dist.py`` fills (``.ci/run`` does); skipped without it,
failed under ``RADHUB_REQUIRE_PEERS=1``.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import pytest
from pydicom import dcmread

from dicomweb.demo_images import DemoStudy, study_instances
from tests.conftest import require_peer_dir
from tests.dicomweb.dicom_data import STOW_TYPE, multipart

from .conftest import ServerProcess, cli
from .ohif_dist import dist_dir
from .ohif_traffic import Exchange, Traffic, until, watch
from .spa_site import SpaSite, serving

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, Response

pytestmark = [pytest.mark.peer, pytest.mark.slow]

CLIENT_ID = "ohif"
USER, PASSWORD = "rita", "pw-for-rita-0123"
SCOPE = "openid fhirUser user/ImagingStudy.rs offline_access"
ACCESS_TTL = 3600  # radhub's access-token lifetime (smart.config.AuthConfig)
RENEW_AFTER = 5  # seconds after sign-in OHIF renews its token in the renewal test
STEP = 30_000  # ms: the most any one step may take before the test fails
MIN_PIXEL_VARIANCE = 100.0  # a blank (one-colour) viewport has 0
SEEN_TOURS = ["basicViewerTour"]  # OHIF's first-visit tours (its 'ohif.tours' customization)


def _study(mrn: str, name: tuple[str, str], accession: str, code: str, modality: str) -> DemoStudy:
    procedure, body_part = {
        "CT": ("CT Chest", "CHEST"),
        "MR": ("MR Brain", "HEAD"),
        "DX": ("XR Chest 2 Views", "CHEST"),
    }[modality]
    sex = {"Ada": "F", "Ben": "M"}.get(name[1], "O")
    started = datetime(2024, 5, int(mrn[-1]), 9, tzinfo=UTC)
    return DemoStudy(
        mrn, "urn:oid:1.2.3.4", *name, sex, "19700101", accession, code, procedure,
        modality, body_part, started,
    )  # fmt: skip


# a CT (two series), an MR and radiographs stored RLE Lossless, as the demo makes them
STUDIES = (
    _study("MRN-1", ("Ohif", "Ada"), "ACC-OHIF-1", "24627-2", "CT"),
    _study("MRN-2", ("Viewer", "Ben"), "ACC-OHIF-2", "24590-2", "MR"),
    _study("MRN-3", ("Cornerstone", "Cy"), "ACC-OHIF-3", "36643-5", "DX"),
)
LISTED = {f"{s.family}, {s.given}" for s in STUDIES}  # as OHIF's study list shows them
CT = STUDIES[0]
CT_UID = str(dcmread(io.BytesIO(study_instances(CT)[0]), stop_before_pixels=True).StudyInstanceUID)


@dataclass(frozen=True)
class Site:
    radhub: ServerProcess
    ohif: SpaSite

    @property
    def authorize_url(self) -> str:
        return f"{self.radhub.base}/auth/authorize"

    def configure(self, scope: str = SCOPE, renew_after: int | None = None) -> None:
        """The ``app-config.js`` OHIF loads next, and its silent-renewal page."""
        body = app_config(self.radhub.base, scope, renew_after)
        self.ohif.supplied["/app-config.js"] = body
        self.ohif.supplied["/silent-refresh.html"] = SILENT_REFRESH


# The silent-renewal page a site deploys with OHIF 3. The one OHIF 3.13 ships loads the
# old oidc-client 1.x, whose message (the bare URL) OHIF's client, oidc-client-ts, does
# not take, so its renewal never completed. This page sends what oidc-client-ts's own
# signinSilentCallback sends (AbstractChildWindow._notifyParent).
SILENT_REFRESH = b"""<!doctype html><title>Silent renewal</title><script>
parent.postMessage(
  {source: 'oidc-client', url: location.href, keepOpen: false}, location.origin);
</script>"""


def app_config(radhub: str, scope: str, renew_after: int | None) -> bytes:
    """OHIF's configuration for a DICOMweb archive behind an OpenID provider."""
    dicomweb = f"{radhub}/dicomweb"
    oidc: dict[str, Any] = {
        "authority": f"{radhub}/auth",
        "client_id": CLIENT_ID,
        "redirect_uri": "/callback",
        "silent_redirect_uri": "/silent-refresh.html",
        "post_logout_redirect_uri": "/",
        "response_type": "code",
        "scope": scope,
        "extraQueryParams": {"aud": f"{radhub}/fhir"},  # SMART: the resource server
    }
    if renew_after is not None:  # the client renews this long before expiry
        oidc["accessTokenExpiringNotificationTimeInSeconds"] = ACCESS_TTL - renew_after
    source = {
        "friendlyName": "radhub",
        "name": "radhub",
        "qidoRoot": dicomweb,
        "wadoRoot": dicomweb,
        "wadoUriRoot": f"{dicomweb}/wado",
        "qidoSupportsIncludeField": True,
        "supportsReject": False,
        "supportsFuzzyMatching": True,
        "supportsWildcard": True,
        "imageRendering": "wadors",
        "thumbnailRendering": "wadors",
        "enableStudyLazyLoad": True,
        "staticWado": False,
        "singlepart": "bulkdata,video",
        "bulkDataURI": {"enabled": True, "relativeResolution": "studies"},
        "omitQuotationForMultipartRequest": True,
    }
    config = {
        "routerBasename": "/",
        "showStudyList": True,
        "extensions": [],
        "modes": [],
        "investigationalUseDialog": {"option": "never"},
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": False,
        "maxNumberOfWebWorkers": 2,
        "defaultDataSourceName": "radhub",
        "oidc": [oidc],
        "dataSources": [
            {
                "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
                "sourceName": "radhub",
                "configuration": source,
            }
        ],
    }
    return f"window.config = {json.dumps(config, indent=1)};\n".encode()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """OHIF on one loopback port, radhub on another allowing that origin alone."""
    dist = require_peer_dir(dist_dir(), "index.html", "python3 tests/e2e/ohif_dist.py")
    data = tmp_path_factory.mktemp("ohif") / "data"
    with serving(dist) as ohif:
        server = ServerProcess(data, None, "--cors-origin", ohif.origin)
        try:
            server.start()
            seed(data, server.base, ohif.origin)
            yield Site(server, ohif)
        finally:
            server.kill()


def seed(data: Path, base: str, origin: str) -> None:
    """OHIF's public client, a radiologist, and the studies stored through STOW-RS."""
    d = ["--data-dir", str(data)]
    cli(
        "client", "add", *d, "--client-id", CLIENT_ID, "--public", "--name", "OHIF Viewer",
        "--redirect-uri", f"{origin}/callback",
        "--redirect-uri", f"{origin}/silent-refresh.html",
        "--post-logout-redirect-uri", f"{origin}/",
    )  # fmt: skip
    cli("user", "add", *d, "--username", USER, "--password", PASSWORD, "--role", "radiologist")
    token = cli("token", *d, "--scope", "system/*.cruds")
    headers = {"Authorization": f"Bearer {token}", "Content-Type": STOW_TYPE}
    with httpx.Client(base_url=base, headers=headers, timeout=60) as http:
        for study in STUDIES:
            stored = http.post("/dicomweb/studies", content=multipart(*study_instances(study)))
            assert stored.status_code == 200, stored.text


@pytest.fixture
def page(browser: Browser, site: Site) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(STEP)
    # No request interception (page.route) here: Playwright would then answer the CORS
    # preflights itself, and they would never reach radhub.
    # A user who has seen the viewer's guided tour: its overlay would take the clicks.
    context.add_init_script(f"localStorage.setItem('shownTours', '{json.dumps(SEEN_TOURS)}')")
    try:
        yield context.new_page()
    finally:
        context.close()


@pytest.fixture
def traffic(page: Page, site: Site) -> Traffic:
    return watch(page, site.radhub.base)


def step(what: str, traffic: Traffic, action: Callable[..., Any], *args: Any) -> Any:
    """``action(*args)``, or a failure saying which step did not finish and what radhub saw."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        return action(*args)
    except PlaywrightTimeout as exc:
        pytest.fail(f"{what}: not within {STEP // 1000} s ({exc.message})\n{traffic.report()}")


def sign_in(page: Page, site: Site, traffic: Traffic) -> dict[str, list[str]]:
    """From OHIF to radhub's login page, then the consent page; the authorize query."""
    step("OHIF sends the user to radhub", traffic, page.wait_for_url, f"{site.authorize_url}?*")
    query = parse_qs(urlsplit(page.url).query)
    page.fill("#username", USER)
    page.fill("#password", PASSWORD)
    page.click("#login")
    step("radhub asks for consent", traffic, page.locator("#approve").wait_for)
    return query


def approve(page: Page, traffic: Traffic) -> Response:
    """Approve on the consent page; OHIF's first study search once back."""

    def back_in_ohif() -> Response:
        with page.expect_response(traffic.is_study_search) as searched:
            page.click("#approve")
        return searched.value

    answer: Response = step("back in OHIF, the studies are searched", traffic, back_in_ohif)
    return answer


def pixel_variance(page: Page) -> float:
    """The largest variance of grey levels over OHIF's viewport canvases (0: blank)."""
    return float(page.evaluate(PIXEL_VARIANCE_JS))


PIXEL_VARIANCE_JS = """() => {
  let best = 0;
  for (const canvas of document.querySelectorAll('canvas.cornerstone-canvas')) {
    if (!canvas.width || !canvas.height) continue;
    const d = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
    let n = 0, sum = 0, squares = 0;
    for (let i = 0; i < d.length; i += 4) { n++; sum += d[i]; squares += d[i] * d[i]; }
    best = Math.max(best, squares / n - (sum / n) ** 2);
  }
  return best;
}"""


def wait_for_image(page: Page, traffic: Traffic) -> float:
    shown = f"({PIXEL_VARIANCE_JS})() > {MIN_PIXEL_VARIANCE}"
    step(
        "the viewport shows the image", traffic, partial(page.wait_for_function, shown, polling=250)
    )
    return pixel_variance(page)


def test_ohif_signs_in_lists_the_studies_and_shows_one(
    page: Page, site: Site, traffic: Traffic
) -> None:
    """Sign in through OHIF's own client, find the stored studies in its list, open the
    CT in the viewer and see it; every call to radhub answered, none refused by CORS."""
    site.configure()
    page.goto(site.ohif.origin + "/")
    asked = sign_in(page, site, traffic)
    # OHIF's own client: code flow, PKCE, back to its /callback, aimed at the FHIR server
    assert asked["response_type"] == ["code"] and asked["code_challenge_method"] == ["S256"]
    assert asked["redirect_uri"] == [f"{site.ohif.origin}/callback"]
    assert asked["client_id"] == [CLIENT_ID] and asked["aud"] == [f"{site.radhub.base}/fhir"]
    listed = approve(page, traffic).json()
    names = {study["00100010"]["Value"][0]["Alphabetic"] for study in listed}
    assert names == {f"{s.family}^{s.given}" for s in STUDIES}
    for name in sorted(LISTED):
        step(f"the study list shows {name}", traffic, page.get_by_text(name, exact=True).wait_for)

    page.get_by_text(f"{CT.family}, {CT.given}", exact=True).click()
    page.get_by_role("button", name="Basic Viewer").click()
    step("OHIF opens the viewer", traffic, page.wait_for_url, "**/viewer?*")
    assert parse_qs(urlsplit(page.url).query)["StudyInstanceUIDs"] == [CT_UID]
    variance = wait_for_image(page, traffic)

    traffic.assert_clean()
    calls = traffic.kinds()
    assert {"discovery", "token", "studies", "series", "metadata", "frames"} <= calls.keys(), calls
    assert calls["token"] == ["authorization_code"]
    # every DICOMweb call carried the token OHIF got, and was preflighted and allowed
    assert traffic.bearers("dicomweb") == {traffic.access_tokens()[0]}
    assert traffic.preflighted("dicomweb"), traffic.report()
    assert all(uid == CT_UID for uid in traffic.studies_opened()), traffic.studies_opened()
    assert variance > MIN_PIXEL_VARIANCE, variance


def test_ohif_signs_out_through_radhubs_end_session_endpoint(
    page: Page, site: Site, traffic: Traffic
) -> None:
    """OHIF's Logout: its client sends the browser to radhub's ``end_session_endpoint``
    with the id_token as hint, radhub sends it back to the address OHIF registered, and
    OHIF, signed out, starts a new sign-in at radhub's login page."""
    site.configure()
    page.goto(site.ohif.origin + "/")
    sign_in(page, site, traffic)
    approve(page, traffic)
    before = len(traffic.exchanges)
    back = f"{site.ohif.origin}/"
    page.goto(f"{site.ohif.origin}/logout?redirect_uri={quote(back, safe='')}")
    ended = step("OHIF signs out at radhub", traffic, traffic.wait_for, page, "logout", before)
    assert ended.status == 302, traffic.report()
    assert ended.location is not None and ended.location.split("?")[0] == back, ended.location
    assert ended.query["post_logout_redirect_uri"] == [back] and ended.query["id_token_hint"]
    step("OHIF asks for a new sign-in", traffic, page.wait_for_url, f"{site.authorize_url}?*")
    page.locator("#username").wait_for()
    traffic.assert_clean()


def test_ohif_renews_its_token_and_reads_on_with_the_new_one(
    page: Page, site: Site, traffic: Traffic
) -> None:
    """With ``offline_access`` OHIF renews its token with the refresh token (radhub
    rotates it), and reads on with the new access token."""
    site.configure(renew_after=RENEW_AFTER)
    # a link straight into the viewer: OHIF returns there after the sign-in
    page.goto(f"{site.ohif.origin}/viewer?StudyInstanceUIDs={CT_UID}")
    sign_in(page, site, traffic)
    page.click("#approve")
    wait_for_image(page, traffic)
    step("OHIF renews its token", traffic, traffic.wait_for, page, "refresh_token")

    # the second series, opened after the renewal, is read with the new token
    before = len(traffic.exchanges)
    page.locator("[data-cy=study-browser-thumbnail][data-series='2']").dblclick()
    step("the second series is read", traffic, traffic.wait_for, page, "frames", before)
    traffic.assert_clean()
    first, *renewed = traffic.access_tokens()
    later = traffic.bearers("frames", since=before)
    assert renewed and later and later <= set(renewed) and first not in later


@pytest.mark.parametrize("session_kept", [True, False], ids=["signed-in", "cookie-cleared"])
def test_ohif_renews_without_a_refresh_token_through_the_sign_in_session(
    page: Page, site: Site, traffic: Traffic, session_kept: bool
) -> None:
    """Without ``offline_access`` OHIF's client renews its token in a hidden iframe with
    ``prompt=none``. radhub's sign-in session answers with a code and no page, and OHIF
    exchanges it for a new token. Once the browser has lost the session's cookie, the
    frame is sent straight back with ``login_required`` (radhub used to show its login
    page there, which a frame may not show; the client timed out and retried every 15 s).
    The scope has ``openid`` without ``fhirUser``: the sign-in needs an ``id_token`` all
    the same."""
    site.configure(scope="openid user/ImagingStudy.rs", renew_after=RENEW_AFTER)
    page.goto(site.ohif.origin + "/")
    sign_in(page, site, traffic)
    searched = approve(page, traffic)
    assert searched.ok and len(searched.json()) == len(STUDIES)
    (signed_in,) = [e.body for e in traffic.exchanges if e.body]
    assert signed_in["id_token"] and "refresh_token" not in signed_in
    if not session_kept:
        page.context.clear_cookies()

    def silent(e: Exchange) -> bool:
        return e.kind == "authorize" and e.query.get("prompt") == ["none"]

    renewal = step("OHIF tries to renew its token", traffic, traffic.wait_for, page, silent)
    assert renewal.status == 302 and renewal.location is not None, traffic.report()
    back = urlsplit(renewal.location)
    assert f"{back.scheme}://{back.netloc}{back.path}" == f"{site.ohif.origin}/silent-refresh.html"
    answer = parse_qs(back.query)
    assert answer["state"] == renewal.query["state"]
    hits = site.ohif.hits
    step("the frame reaches OHIF", traffic, until, page, lambda: "/silent-refresh.html" in hits)
    if session_kept:
        assert "code" in answer and "error" not in answer, answer
        after = traffic.exchanges.index(renewal)
        renewed = step("OHIF redeems the code", traffic, traffic.wait_for, page, "token", after)
        assert renewed.status == 200 and renewed.grant_type == "authorization_code"
        first, second = traffic.access_tokens()
        assert first != second
    else:
        assert answer["error"] == ["login_required"] and "code" not in answer
        assert traffic.kinds()["token"] == ["authorization_code"]
    traffic.assert_clean()


def test_ohif_opened_again_is_let_in_by_the_sign_in_session(
    page: Page, site: Site, traffic: Traffic
) -> None:
    """A second OHIF tab (as after closing the first, or a link from the worklist) needs
    no password and no consent: radhub's sign-in session remembers both, and the
    authorize request is answered with a code at once."""
    site.configure()
    page.goto(site.ohif.origin + "/")
    sign_in(page, site, traffic)
    approve(page, traffic)
    again = page.context.new_page()
    opened = watch(again, site.radhub.base)
    with again.expect_response(opened.is_study_search) as searched:
        again.goto(site.ohif.origin + "/")
    assert searched.value.ok and len(searched.value.json()) == len(STUDIES)
    (authorized,) = [e for e in opened.exchanges if e.kind == "authorize"]
    assert authorized.status == 302 and authorized.location is not None
    assert "code" in parse_qs(urlsplit(authorized.location).query), authorized.location
    assert opened.kinds()["token"] == ["authorization_code"]
    assert not again.locator("#username").count()
    opened.assert_clean()


QIDO_FROM_PAGE = """async ([url, token]) => {
  try {
    const answer = await fetch(url, {
      headers: {Authorization: `Bearer ${token}`, Accept: 'application/dicom+json'},
    });
    return (await answer.json()).length;
  } catch (error) {
    return String(error);
  }
}"""
BLANK = b"<!doctype html><title>blank</title>"


def test_an_origin_radhub_was_not_given_cannot_read_with_a_token(
    page: Page, site: Site, traffic: Traffic, tmp_path: Path
) -> None:
    """The control for the tests above: a bearer-token QIDO call made by a page on OHIF's
    origin is answered, the same call from an origin not given to ``--cors-origin`` is
    refused by the browser (its preflight gets no CORS approval), and the traffic record
    reports it as the failure the other tests check there is none of."""
    token = cli("token", "--data-dir", str(site.radhub.data_dir), "--scope", "system/*.rs")
    search = [f"{site.radhub.base}/dicomweb/studies", token]
    site.ohif.supplied["/blank.html"] = BLANK
    page.goto(f"{site.ohif.origin}/blank.html")
    assert page.evaluate(QIDO_FROM_PAGE, search) == len(STUDIES)
    traffic.assert_clean()
    assert traffic.preflighted("dicomweb")

    with serving(tmp_path) as other:
        other.supplied["/blank.html"] = BLANK
        page.goto(f"{other.origin}/blank.html")
        refused = page.evaluate(QIDO_FROM_PAGE, search)
    assert refused == "TypeError: Failed to fetch"
    step("the browser reports a CORS failure", traffic, until, page, lambda: traffic.cors_failures)
    assert [status for _, status in traffic.preflights][-1] >= 400, traffic.report()
    with pytest.raises(AssertionError):
        traffic.assert_clean()
