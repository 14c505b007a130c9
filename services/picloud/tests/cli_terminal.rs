//! The `picloud` CLI on a terminal (issue #13), under `script` for a
//! pseudo-terminal: colour only there and never with `NO_COLOR`, and a
//! token or secret typed at a prompt is not echoed. Skipped where there is
//! no `script` (util-linux).

#[path = "support/cli.rs"]
mod support;

use std::time::Duration;

use support::User;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Types `input` once `prompt` is on the screen, and returns the whole
/// screen and the exit code.
async fn type_at_prompt(
    mut cmd: tokio::process::Command,
    prompt: &str,
    input: &str,
) -> (String, i32) {
    let mut child = cmd.spawn().expect("spawn script");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut screen = Vec::new();
    let mut buf = [0u8; 1024];
    let asked = tokio::time::timeout(Duration::from_secs(15), async {
        while !String::from_utf8_lossy(&screen).contains(prompt) {
            let n = stdout.read(&mut buf).await.expect("read the screen");
            if n == 0 {
                return false;
            }
            screen.extend_from_slice(&buf[..n]);
        }
        true
    })
    .await;
    assert_eq!(
        asked,
        Ok(true),
        "no prompt {prompt:?}: {:?}",
        String::from_utf8_lossy(&screen)
    );
    // Give the prompt a moment to switch echo off before typing.
    tokio::time::sleep(Duration::from_millis(200)).await;
    stdin
        .write_all(format!("{input}\r").as_bytes())
        .await
        .expect("type");
    tokio::time::timeout(Duration::from_secs(15), stdout.read_to_end(&mut screen))
        .await
        .expect("the command ends")
        .expect("read the screen");
    let status = child.wait().await.expect("wait");
    drop(stdin);
    (
        String::from_utf8_lossy(&screen).into_owned(),
        status.code().unwrap_or(-1),
    )
}

/// On a terminal the table header is bold; NO_COLOR turns it off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn colour_only_on_a_terminal_and_never_with_no_color() {
    let (env, user) = User::with_env().await;
    let Some(mut colour) = user.on_terminal(&["ls"], false) else {
        eprintln!("skipped: no `script` to make a pseudo-terminal");
        return env.cleanup().await;
    };
    let hello = user.file("hello.rhai", "\"hi\"");
    user.ok(&["deploy", &hello]).await;
    let out = colour
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("hello"), "{text:?}");
    assert!(text.contains('\x1b'), "no colour on a terminal: {text:?}");
    let mut plain = user.on_terminal(&["ls"], true).unwrap();
    let out = plain
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("hello"), "{text:?}");
    assert!(!text.contains('\x1b'), "colour with NO_COLOR: {text:?}");
    env.cleanup().await;
}

/// `picloud login URL` on a terminal asks for the token and does not show
/// it as it is typed; `secret set NAME` asks for the value the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_or_secret_typed_at_the_prompt_is_not_echoed() {
    let mut env = support::Env::new().await;
    let front = env.start_front().await;
    env.start_executor().await;
    let user = User::new(&front.base, &env.token);
    let Some(login) = user.on_terminal(&["login", &user.base], true) else {
        eprintln!("skipped: no `script` to make a pseudo-terminal");
        return env.cleanup().await;
    };
    let (screen, code) = type_at_prompt(login, "admin token:", &user.token).await;
    assert_eq!(code, 0, "{screen:?}");
    assert!(
        !screen.contains(&user.token),
        "the token was echoed: {screen:?}"
    );
    assert!(user.profile_file().exists());

    let value = "typed-secret-5521";
    let set = user.on_terminal(&["secret", "set", "typed"], true).unwrap();
    let (screen, code) = type_at_prompt(set, "value of secret typed:", value).await;
    assert_eq!(code, 0, "{screen:?}");
    assert!(!screen.contains(value), "the secret was echoed: {screen:?}");
    let keeper = user.file("keeper.rhai", "secret(\"typed\")");
    user.ok(&["deploy", &keeper]).await;
    user.invoke_until(&["keeper"], value).await;
    env.cleanup().await;
}

/// `rm` on a terminal asks; anything but yes keeps the script.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rm_asks_on_a_terminal() {
    let (env, user) = User::with_env().await;
    let hello = user.file("hello.rhai", "\"hi\"");
    user.ok(&["deploy", &hello]).await;
    let Some(no) = user.on_terminal(&["rm", "hello"], true) else {
        eprintln!("skipped: no `script` to make a pseudo-terminal");
        return env.cleanup().await;
    };
    let (screen, code) = type_at_prompt(no, "[y/N]", "n").await;
    assert_eq!(code, 1, "{screen:?}");
    assert!(screen.contains("not deleted"), "{screen:?}");
    user.ok(&["show", "hello"]).await;
    let yes = user.on_terminal(&["rm", "hello"], true).unwrap();
    let (screen, code) = type_at_prompt(yes, "[y/N]", "y").await;
    assert_eq!(code, 0, "{screen:?}");
    user.expect(1, &["show", "hello"]).await;
    env.cleanup().await;
}
