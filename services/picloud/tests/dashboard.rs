//! The dashboard at `/dashboard`: a built app served over real HTTP with
//! its single-page fallback, content types and cache headers; without one,
//! a page saying how to build it; the manager's router mounts it; and the
//! schedule preview its form uses.

use std::path::Path;

use picloud_manager::dashboard::Dashboard;
use picloud_testkit::{Client, TestEnv};
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// Serves `app` on a free port; the base URL.
async fn serve(app: Dashboard) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app.router()).await });
    format!("http://{addr}")
}

async fn get(url: &str) -> (StatusCode, String, String, String) {
    let resp = reqwest::get(url).await.unwrap();
    let header = |h: &str| {
        resp.headers()
            .get(h)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    let (ct, cache) = (header("content-type"), header("cache-control"));
    (resp.status(), ct, cache, resp.text().await.unwrap())
}

async fn preview(c: &Client, query: &str) -> reqwest::Response {
    c.api(Method::GET, &format!("/schedules/preview?{query}"), None)
        .await
}

fn write(root: &Path, rel: &str, text: &str) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

#[tokio::test]
async fn a_built_app_is_served_with_its_fallback_types_and_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let app = tmp.path().join("build");
    write(&app, "index.html", "<!doctype html><p>the app</p>");
    write(
        &app,
        "_app/immutable/entry/app.Ab12.js",
        "export const x = 1;",
    );
    write(&app, "_app/immutable/assets/0.Cd34.css", "p{color:red}");
    write(&app, "_app/version.json", "{\"version\":\"1\"}");
    // Next to the app, never to be served.
    write(tmp.path(), "secret.txt", "not for you");
    let base = serve(Dashboard::at(Some(app))).await;

    for path in ["/dashboard", "/dashboard/", "/dashboard/scripts/hello"] {
        let (status, ct, cache, body) = get(&format!("{base}{path}")).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert_eq!(ct, "text/html; charset=utf-8", "{path}");
        assert_eq!(cache, "no-cache", "{path}");
        assert!(body.contains("the app"), "{path}: {body}");
    }
    let (status, ct, cache, body) = get(&format!(
        "{base}/dashboard/_app/immutable/entry/app.Ab12.js"
    ))
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ct, "text/javascript; charset=utf-8");
    assert_eq!(cache, "public, max-age=31536000, immutable");
    assert_eq!(body, "export const x = 1;");
    let (_, ct, cache, _) = get(&format!(
        "{base}/dashboard/_app/immutable/assets/0.Cd34.css"
    ))
    .await;
    assert_eq!(
        (ct.as_str(), cache.as_str()),
        (
            "text/css; charset=utf-8",
            "public, max-age=31536000, immutable"
        )
    );
    // Not hashed: revalidated.
    let (_, ct, cache, _) = get(&format!("{base}/dashboard/_app/version.json")).await;
    assert_eq!(
        (ct.as_str(), cache.as_str()),
        ("application/json", "no-cache")
    );
    // A missing asset is a 404, not the app's page.
    let (status, _, _, _) = get(&format!("{base}/dashboard/_app/immutable/gone.js")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // No way out of the folder.
    for path in ["/dashboard/%2e%2e/secret.txt", "/dashboard/..%2fsecret.txt"] {
        let (_, _, _, body) = get(&format!("{base}{path}")).await;
        assert!(!body.contains("not for you"), "{path}");
    }
    // A NUL or a very long name is no file: the app's page, never a 5xx.
    let long = format!("/dashboard/{}", "a/".repeat(2000));
    for path in ["/dashboard/%00", "/dashboard/_app/%00.js", &long] {
        let (status, _, _, _) = get(&format!("{base}{path}")).await;
        assert!(!status.is_server_error(), "{path:.40}: {status}");
    }
}

#[tokio::test]
async fn without_a_build_every_dashboard_url_says_how_to_build_it() {
    let base = serve(Dashboard::at(None)).await;
    for path in [
        "/dashboard",
        "/dashboard/",
        "/dashboard/_app/immutable/x.js",
    ] {
        let (status, ct, _, body) = get(&format!("{base}{path}")).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert_eq!(ct, "text/html; charset=utf-8");
        assert!(body.contains("npm ci &amp;&amp; npm run build"), "{body}");
        assert!(body.contains("PICLOUD_DASHBOARD_DIR"), "{body}");
    }
}

#[tokio::test]
async fn the_manager_serves_the_dashboard_and_previews_schedules() {
    let mut env = TestEnv::new().await;
    let front = env.start_front().await;
    let (status, ct, _, _) = get(&format!("{}/dashboard", front.base)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ct, "text/html; charset=utf-8");

    let c = Client::new(&front.base, &env.token);
    let resp = preview(&c, "cron=0%209%20*%20*%20*&timezone=Asia/Tokyo").await;
    let status = resp.status();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    let runs: Vec<chrono::DateTime<chrono::Utc>> = body["next_runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(runs.len(), 5, "{body}");
    let now = chrono::Utc::now();
    for (i, t) in runs.iter().enumerate() {
        // 09:00 in Tokyo (UTC+9, no DST) is 00:00 UTC, a day apart.
        assert_eq!(t.format("%H:%M:%S").to_string(), "00:00:00", "{body}");
        assert!(*t > now);
        if i > 0 {
            assert_eq!(*t - runs[i - 1], chrono::TimeDelta::days(1));
        }
    }
    // Default zone UTC; bad input is a clear 400 with the right code.
    let body: Value = preview(&c, "cron=30%2010%20*%20*%20*")
        .await
        .json()
        .await
        .unwrap();
    assert!(
        body["next_runs"][0].as_str().unwrap().contains("T10:30:00"),
        "{body}"
    );
    for (q, code) in [
        ("cron=nope", "invalid_cron"),
        (
            "cron=*%20*%20*%20*%20*&timezone=Mars/Olympus",
            "invalid_timezone",
        ),
        ("timezone=UTC", "bad_request"),
        ("cron=*%20*%20*%20*%20*%00", "invalid_cron"),
        ("cron=*%20*%20*%20*%20*&timezone=UTC%00", "invalid_timezone"),
    ] {
        let resp = preview(&c, q).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{q}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], code, "{q}: {body}");
    }
    // The admin token is required.
    let anon = reqwest::get(format!(
        "{}/api/v1/schedules/preview?cron=*%20*%20*%20*%20*",
        front.base
    ))
    .await
    .unwrap();
    assert_eq!(anon.status(), StatusCode::UNAUTHORIZED);
    env.cleanup().await;
}
