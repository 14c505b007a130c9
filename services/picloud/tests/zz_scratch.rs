#[path = "support/cli.rs"]
mod support;
use support::User;
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scratch() {
    let (env, user) = User::with_env().await;
    let hello = user.file("hello.rhai", "\"hi\"");
    let bad = user.file("bad.rhai", "let x = 1;\n\tlet y = x +;\n");
    let p = |r: support::Run| {
        eprintln!(
            "== code {}\n--stdout--\n{}\n--stderr--\n{}",
            r.code, r.stdout, r.stderr
        )
    };
    p(user.run(&["deploy", &hello]).await);
    p(user.run(&["deploy", &bad]).await);
    p(user.run(&["show", "hello"]).await);
    p(user.run(&["versions", "hello"]).await);
    p(user.run(&["invoke", "hello", "-v"]).await);
    p(user
        .run(&[
            "schedule",
            "add",
            "hello",
            "*/5 * * * *",
            "--overlap",
            "sometimes",
        ])
        .await);
    p(user
        .run(&[
            "schedule",
            "add",
            "hello",
            "*/5 * * * *",
            "--timezone",
            "Mars/Base",
        ])
        .await);
    p(user.run(&["schedule", "add", "hello", "*/5 * * * *"]).await);
    p(user.run(&["schedule", "ls"]).await);
    p(user.run(&["invocations", "ls"]).await);
    p(user.run(&["module", "deploy", &bad]).await);
    p(user
        .run(&["deploy", &hello, "--limit", "max_bogus=3"])
        .await);
    p(user.run(&["deploy", &hello, "--name", "Bad Name"]).await);
    p(user.run(&["invoke", "hello", "-X", "GET POST"]).await);
    p(user.run(&["subscribe", "hello", "bad topic"]).await);
    p(user.run(&["invocations", "show", "nope"]).await);
    p(user.run(&["invocations", "ls", "--status", "weird"]).await);
    p(user.run(&["secret", "set", "Bad Name", "x"]).await);
    env.cleanup().await;
}
