//! The catalogue's unit tests: loading and its error messages, patterns, request
//! shapes, and property tests of the matcher against a reference implementation.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use agent_sts_verifier::glob::glob_match_counting;
use proptest::prelude::*;
use std::fs;

fn trusts() -> TrustDirectory {
    TrustDirectory::new([
        ("k8s-prod".to_owned(), vec![]),
        ("k8s-staging-other".to_owned(), vec![]),
        ("spire".to_owned(), vec!["example.org".to_owned()]),
        ("spire-b".to_owned(), vec!["other.example".to_owned()]),
        ("corp-idp".to_owned(), vec![]),
    ])
}

/// Writes the files into a fresh directory and loads it.
fn load(files: &[(&str, &str)]) -> (tempfile::TempDir, Result<Catalogue, CatalogueError>) {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        fs::write(dir.path().join(name), text).unwrap();
    }
    let result = Catalogue::load_dir(dir.path(), &trusts());
    (dir, result)
}

/// The Display of the error loading `text` as `a.toml`, with the temporary
/// directory shown as `scopes`.
fn error_of(files: &[(&str, &str)]) -> String {
    let (dir, result) = load(files);
    let err = result.expect_err("catalogue should be rejected");
    err.to_string()
        .replace(&dir.path().display().to_string(), "scopes")
}

fn error_in(text: &str) -> String {
    error_of(&[("a.toml", text)])
}

/// A valid action with `extra` lines appended (line 1 is `[[action]]`).
fn action_with(extra: &str) -> String {
    format!(
        "[[action]]\nname = \"x.y\"\naudience = \"https://x\"\nttl = \"5m\"\nagents = [\"k8s-prod:a\"]\n{extra}"
    )
}

fn principal<'a>(trust: &'a str, subject: &'a str, domains: &'a [String]) -> Principal<'a> {
    Principal {
        trust,
        subject,
        spiffe_domains: domains,
    }
}

const GITHUB: &str = r#"# GitHub actions
[[action]]
name = "github.issues.create"
description = "Open an issue in one repository"
audience = "https://github-shim.internal"
ttl = "5m"
agents = ["spiffe://example.org/agent/triage", "k8s-prod:system:serviceaccount:agents:*"]
delegation = "optional"
subjects = ["corp-idp:*@example.org"]
credential = "integrations/github"

[action.request]
method = "post"
path = "/repos/{owner}/{repo}/issues"

[[action]]
name = "github.issues.read"
audience = "https://github-shim.internal"
ttl = "1h 30m"
agents = [
  "k8s-prod:system:serviceaccount:agents:triage",
]
"#;

const SLACK: &str = r#"
[[action]]
name = "slack.post"
audience = "https://slack-shim.internal"
ttl = "24h"
agents = ["spire:spiffe://example.org/bot"]
delegation = "required"
subjects = ["corp-idp:alice@example.org", "corp-idp:bob@example.org"]
"#;

#[test]
fn good_catalogue_loads() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("github.toml"), GITHUB).unwrap();
    fs::write(dir.path().join("slack.toml"), SLACK).unwrap();
    fs::write(dir.path().join("empty.toml"), "# nothing here yet\n").unwrap();
    fs::write(dir.path().join("README.md"), "not [toml").unwrap();
    fs::write(dir.path().join("github.toml.bak"), "not [toml").unwrap();
    fs::create_dir(dir.path().join("nested.toml")).unwrap();

    let cat = Catalogue::load_dir(dir.path(), &trusts()).unwrap();
    assert_eq!(cat.len(), 3);
    assert!(!cat.is_empty());
    let names: Vec<_> = cat.actions().map(|a| a.name.as_str()).collect();
    assert_eq!(
        names,
        ["github.issues.create", "github.issues.read", "slack.post"]
    );
    assert_eq!(
        cat.audiences().into_iter().collect::<Vec<_>>(),
        [
            "https://github-shim.internal",
            "https://slack-shim.internal"
        ]
    );

    let create = cat.get("github.issues.create").unwrap();
    assert_eq!(create.description, "Open an issue in one repository");
    assert_eq!(create.ttl, Some(Duration::from_secs(300)));
    assert_eq!(create.delegation, Delegation::Optional);
    assert_eq!(create.credential.as_deref(), Some("integrations/github"));
    assert_eq!(create.source.file, dir.path().join("github.toml"));
    assert_eq!(create.source.line, 2);
    assert_eq!(
        create
            .agents
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        [
            "spiffe://example.org/agent/triage",
            "k8s-prod:system:serviceaccount:agents:*"
        ]
    );
    assert_eq!(create.agents[0].spiffe_trust_domain(), Some("example.org"));
    assert_eq!(create.agents[1].trust(), Some("k8s-prod"));
    let request = create.request.as_ref().unwrap();
    assert_eq!(request.method, "POST");
    assert_eq!(request.path.as_str(), "/repos/{owner}/{repo}/issues");
    assert!(!request.matches("post", "/repos/acme/widgets/issues"));
    assert!(!request.matches("GET", "/repos/acme/widgets/issues"));

    let read = cat.get("github.issues.read").unwrap();
    assert_eq!(read.description, "");
    assert_eq!(read.ttl, Some(Duration::from_secs(90 * 60)));
    assert_eq!(read.delegation, Delegation::Forbidden);
    assert!(read.subjects.is_empty());
    assert!(read.credential.is_none() && read.request.is_none());
    assert_eq!(read.source.line, 16);

    let slack = cat.get("slack.post").unwrap();
    assert_eq!(slack.ttl, Some(MAX_TTL));
    assert_eq!(slack.delegation, Delegation::Required);
    assert_eq!(slack.subjects.len(), 2);
    assert_eq!(slack.source.line, 2);
    assert!(cat.get("slack.read").is_none());
}

#[test]
fn permits_agent_and_subject() {
    let (_dir, cat) = load(&[("github.toml", GITHUB), ("slack.toml", SLACK)]);
    let cat = cat.unwrap();
    let create = cat.get("github.issues.create").unwrap();
    let read = cat.get("github.issues.read").unwrap();
    let spire = ["example.org".to_owned()];

    let triage = principal("k8s-prod", "system:serviceaccount:agents:triage", &[]);
    assert!(create.permits_agent(&triage));
    assert!(read.permits_agent(&triage));
    let spiffe = principal("spire", "spiffe://example.org/agent/triage", &spire);
    assert!(create.permits_agent(&spiffe));
    assert!(!read.permits_agent(&spiffe));
    // The same sub from another trust does not inherit the entitlement.
    let other = principal(
        "k8s-staging-other",
        "system:serviceaccount:agents:triage",
        &[],
    );
    assert!(!create.permits_agent(&other));

    let alice = principal("corp-idp", "alice@example.org", &[]);
    assert!(create.permits_subject(&alice));
    assert!(!create.permits_subject(&principal("k8s-prod", "alice@example.org", &[])));
    // Delegation forbidden: nobody may delegate, and agents are not subjects.
    assert!(!read.permits_subject(&alice));
    assert!(!read.permits_subject(&triage));
}

#[test]
fn empty_directory_is_an_empty_catalogue() {
    let (_dir, cat) = load(&[]);
    let cat = cat.unwrap();
    assert!(cat.is_empty());
    assert_eq!(cat.len(), 0);
    assert!(cat.audiences().is_empty());
    let (_dir, cat) = load(&[("a.toml", ""), ("b.toml", "# only comments\n")]);
    assert!(cat.unwrap().is_empty());
}

#[test]
fn missing_directory_is_a_read_dir_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let err = Catalogue::load_dir(&missing, &trusts()).unwrap_err();
    assert!(matches!(err, CatalogueError::ReadDir { .. }), "{err:?}");
    assert!(
        err.to_string()
            .starts_with(&format!("{}: ", missing.display()))
    );
    assert!(err.location().is_none());
}

#[test]
fn the_design_doc_example_error() {
    let text = r#"# scopes
[[action]]
name = "github.issues.create"
audience = "https://github-shim.internal"
ttl = "5m"

agents = ["k8s-prod:a", "k8s-staging:system:serviceaccount:agents:*"]
"#;
    assert_eq!(
        error_of(&[("github.toml", text)]),
        r#"scopes/github.toml:7: agents[1]: unknown trust "k8s-staging""#
    );
    let (_dir, result) = load(&[("github.toml", text)]);
    let err = result.unwrap_err();
    assert_eq!(err.location().unwrap().line, 7);
    assert_eq!(err.key(), Some("agents[1]"));
    assert!(matches!(
        err,
        CatalogueError::Invalid {
            problem: Problem::Pattern(PatternError::UnknownTrust { .. }),
            ..
        }
    ));
}

#[test]
fn toml_shape_errors_name_line_and_key() {
    let cases: &[(&str, &str)] = &[
        // unknown key inside an action
        (
            &action_with("colour = \"red\"\n"),
            "scopes/a.toml:6: colour: unknown field `colour`",
        ),
        // unknown top-level key
        (
            &format!("version = 2\n{}", action_with("")),
            "scopes/a.toml:1: version: unknown field `version`",
        ),
        // missing key: the line of its [[action]]
        (
            "[[action]]\nname = \"a\"\naudience = \"b\"\nttl = \"1m\"\nagents = [\"k8s-prod:a\"]\n\n[[action]]\nname = \"b\"\nttl = \"1m\"\nagents = [\"k8s-prod:a\"]\n",
            "scopes/a.toml:7: audience: missing field `audience`",
        ),
        // wrong type
        (
            "[[action]]\nname = \"a\"\naudience = \"b\"\nttl = 300\n",
            "scopes/a.toml:4: ttl: invalid type: integer `300`, expected a string",
        ),
        (
            &action_with("subjects = \"corp-idp:a\"\n"),
            "scopes/a.toml:6: subjects: invalid type: string",
        ),
        (
            "[[action]]\nname = \"a\"\nagents = [\"k8s-prod:a\",\n  7]\n",
            "scopes/a.toml:4: agents[1]: invalid type: integer `7`",
        ),
        // `action` must be an array of tables
        (
            "[action]\nname = \"a\"\n",
            "scopes/a.toml:1: action: invalid type: map, expected a sequence",
        ),
        // duplicate key
        (
            "[[action]]\nname = \"a\"\nname = \"b\"\n",
            "scopes/a.toml:3: name: duplicate key",
        ),
        // request sub-table
        (
            &action_with("[action.request]\nmethod = \"GET\"\npath = \"/\"\nquery = \"x\"\n"),
            "scopes/a.toml:9: request.query: unknown field `query`",
        ),
        (
            &action_with("\n[action.request]\nmethod = \"GET\"\n"),
            "scopes/a.toml:7: request.path: missing field `path`",
        ),
    ];
    for (text, want) in cases {
        let got = error_in(text);
        assert!(got.starts_with(want), "got {got:?}\nwant {want:?}…");
    }
}

#[test]
fn toml_syntax_errors_name_line_and_key() {
    let cases = [
        (
            "[[action]]\nname = \"a\"\naudience = \"unterminated\nttl = \"5m\"\n",
            "scopes/a.toml:3: audience: ",
        ),
        (
            "# fine\n\n[[action]\nname = \"a\"\n",
            "scopes/a.toml:3: action: ",
        ),
        (
            "[[action]]\nname = \"a\"\nagents = [\"k8s-prod:a\" \"x\"]\n",
            "scopes/a.toml:3: agents[1]: ",
        ),
        (
            "[[action]]\nname = \"a\"\n[action.request]\nmethod = GET\n",
            "scopes/a.toml:4: request.method: ",
        ),
        (
            "[[action]]\nname = \"a\"\nttl 5m\n",
            "scopes/a.toml:3: ttl: ",
        ),
        (
            "[[action]]\nname = \"a\"\n[action.request]\nmethod = \"GET\"\nmethod = \"GET\"\n",
            "scopes/a.toml:5: request.method: duplicate key",
        ),
        ("a = 1\na = 2\n", "scopes/a.toml:2: a: duplicate key"),
    ];
    for (text, want) in cases {
        let got = error_in(text);
        assert!(got.starts_with(want), "got {got:?}\nwant {want:?}…");
        assert!(!got.trim_end().ends_with(':'), "no message in {got:?}");
    }
}

#[test]
fn validation_errors_name_line_and_key() {
    let long_name = format!("a{}", "b".repeat(MAX_NAME_LEN));
    let long_pattern = format!(
        "agents = [\"k8s-prod:{}\"]\n",
        "a".repeat(MAX_SUBJECT_LEN + 1)
    );
    let cases: Vec<(String, &str)> = vec![
        // name
        (
            "[[action]]\nname = \"\"\n".to_owned()
                + "audience = \"a\"\nttl = \"1m\"\nagents = [\"k8s-prod:a\"]\n",
            "scopes/a.toml:2: name: must not be empty",
        ),
        (
            action_with("").replace("x.y", "Github.create"),
            "scopes/a.toml:2: name: invalid action name \"Github.create\": must start with a lowercase letter",
        ),
        (
            action_with("").replace("x.y", "1github"),
            "scopes/a.toml:2: name: invalid action name \"1github\": must start with a lowercase letter",
        ),
        (
            action_with("").replace("x.y", "github issues"),
            "scopes/a.toml:2: name: invalid action name \"github issues\": only [a-z0-9._-] allowed",
        ),
        (
            action_with("").replace("x.y", &long_name),
            "scopes/a.toml:2: name: invalid action name",
        ),
        // audience
        (
            action_with("").replace("https://x", ""),
            "scopes/a.toml:3: audience: must not be empty",
        ),
        (
            action_with("").replace("https://x", "https://x y"),
            "scopes/a.toml:3: audience: audience \"https://x y\" must not hold whitespace",
        ),
        // ttl
        (
            action_with("").replace("5m", "0s"),
            "scopes/a.toml:4: ttl: invalid ttl \"0s\": must be at least 1s",
        ),
        (
            action_with("").replace("5m", "500ms"),
            "scopes/a.toml:4: ttl: invalid ttl \"500ms\": must be at least 1s",
        ),
        (
            action_with("").replace("5m", "24h 1s"),
            "scopes/a.toml:4: ttl: invalid ttl \"24h 1s\": must be at most 24h",
        ),
        (
            action_with("").replace("5m", "five minutes"),
            "scopes/a.toml:4: ttl: invalid ttl \"five minutes\": ",
        ),
        // agents
        (
            action_with("").replace("[\"k8s-prod:a\"]", "[]"),
            "scopes/a.toml:5: agents: must list at least one entry",
        ),
        (
            action_with("").replace("k8s-prod:a", "system:serviceaccount:agents:x"),
            "scopes/a.toml:5: agents[0]: unknown trust \"system\"",
        ),
        (
            action_with("").replace("k8s-prod:a", "triage-bot"),
            "scopes/a.toml:5: agents[0]: \"triage-bot\" names no trust: write TRUST:PATTERN, or a spiffe:// ID",
        ),
        (
            action_with("").replace("k8s-prod:a", ":triage-bot"),
            "scopes/a.toml:5: agents[0]: \":triage-bot\" names no trust",
        ),
        (
            action_with("").replace("k8s-prod:a", "k8s-prod:"),
            "scopes/a.toml:5: agents[0]: empty pattern after trust \"k8s-prod\"",
        ),
        (
            action_with("").replace("k8s-prod:a", ""),
            "scopes/a.toml:5: agents[0]: empty entry",
        ),
        (
            action_with("").replace("k8s-prod:a", "spiffe://elsewhere.org/agent/*"),
            "scopes/a.toml:5: agents[0]: no trust speaks for SPIFFE trust domain \"elsewhere.org\"",
        ),
        (
            action_with("").replace("k8s-prod:a", "spiffe://*.org/agent"),
            "scopes/a.toml:5: agents[0]: invalid SPIFFE ID pattern \"spiffe://*.org/agent\": the trust domain must be literal (no `*`)",
        ),
        (
            action_with("").replace("k8s-prod:a", "spiffe://example.org"),
            "scopes/a.toml:5: agents[0]: invalid SPIFFE ID pattern \"spiffe://example.org\": a path must follow the trust domain",
        ),
        (
            action_with("").replace("k8s-prod:a", "spiffe://example.org/"),
            "scopes/a.toml:5: agents[0]: invalid SPIFFE ID pattern \"spiffe://example.org/\": a path must follow the trust domain",
        ),
        (
            action_with("").replace("k8s-prod:a", "spiffe:///agent"),
            "scopes/a.toml:5: agents[0]: invalid SPIFFE ID pattern \"spiffe:///agent\": empty trust domain",
        ),
        (
            action_with("").replace("agents = [\"k8s-prod:a\"]\n", &long_pattern),
            "scopes/a.toml:5: agents[0]: pattern is 1025 bytes long",
        ),
        // delegation and subjects
        (
            action_with("delegation = \"sometimes\"\nsubjects = [\"corp-idp:*\"]\n"),
            "scopes/a.toml:6: delegation: unknown delegation \"sometimes\"",
        ),
        (
            action_with("delegation = \"required\"\n"),
            "scopes/a.toml:6: delegation: delegation is required but no subjects are listed: say who may delegate",
        ),
        (
            action_with("delegation = \"optional\"\n\nsubjects = []\n"),
            "scopes/a.toml:8: subjects: delegation is optional but no subjects are listed",
        ),
        (
            action_with("subjects = [\"corp-idp:*@example.org\"]\n"),
            "scopes/a.toml:6: subjects: subjects are listed but delegation is forbidden",
        ),
        (
            action_with("delegation = \"forbidden\"\nsubjects = [\"corp-idp:*@example.org\"]\n"),
            "scopes/a.toml:7: subjects: subjects are listed but delegation is forbidden",
        ),
        (
            action_with(
                "delegation = \"optional\"\nsubjects = [\n  \"corp-idp:*\",\n  \"okta:*\",\n]\n",
            ),
            "scopes/a.toml:9: subjects[1]: unknown trust \"okta\"",
        ),
        // credential
        (
            action_with("credential = \"\"\n"),
            "scopes/a.toml:6: credential: must not be empty",
        ),
        (
            action_with("credential = \"/integrations/github\"\n"),
            "scopes/a.toml:6: credential: invalid credential path \"/integrations/github\": no leading or trailing '/'",
        ),
        (
            action_with("credential = \"integrations/../root\"\n"),
            "scopes/a.toml:6: credential: invalid credential path \"integrations/../root\": no empty, '.' or '..' segment",
        ),
        (
            action_with("credential = \"integrations/git hub\"\n"),
            "scopes/a.toml:6: credential: invalid credential path \"integrations/git hub\": only [A-Za-z0-9._/-] allowed",
        ),
        // request
        (
            action_with("[action.request]\nmethod = \"CONNECT\"\npath = \"/\"\n"),
            "scopes/a.toml:7: request.method: unsupported method \"CONNECT\"",
        ),
        (
            action_with("[action.request]\nmethod = \"GET\"\npath = \"repos\"\n"),
            "scopes/a.toml:8: request.path: invalid path template \"repos\": must start with '/'",
        ),
        (
            action_with("[action.request]\nmethod = \"GET\"\npath = \"/search?q=x\"\n"),
            "scopes/a.toml:8: request.path: invalid path template \"/search?q=x\": must not hold a query or fragment",
        ),
        (
            action_with("[action.request]\nmethod = \"GET\"\npath = \"/repos//issues\"\n"),
            "scopes/a.toml:8: request.path: invalid path template \"/repos//issues\": empty segment",
        ),
        (
            action_with("[action.request]\nmethod = \"GET\"\npath = \"/repos/../admin\"\n"),
            "scopes/a.toml:8: request.path: invalid path template \"/repos/../admin\": '.' and '..' segments are not allowed",
        ),
        (
            action_with("[action.request]\nmethod = \"GET\"\npath = \"/repos/x{owner}\"\n"),
            "scopes/a.toml:8: request.path: invalid path template \"/repos/x{owner}\": segment \"x{owner}\": a placeholder must be a whole segment, like {name}",
        ),
        (
            action_with("[action.request]\nmethod = \"GET\"\npath = \"/repos/{Owner}\"\n"),
            "scopes/a.toml:8: request.path: invalid path template \"/repos/{Owner}\": placeholder {Owner}: names are [a-z_][a-z0-9_]*",
        ),
        (
            action_with("[action.request]\nmethod = \"GET\"\npath = \"/{a}/{a}\"\n"),
            "scopes/a.toml:8: request.path: invalid path template \"/{a}/{a}\": placeholder {a} appears twice",
        ),
    ];
    for (text, want) in &cases {
        let got = error_in(text);
        assert!(
            got.starts_with(want),
            "got  {got:?}\nwant {want:?}…\nfor\n{text}"
        );
    }
}

#[test]
fn duplicate_names_point_at_the_second_and_name_the_first() {
    let first = action_with("");
    let got = error_of(&[("a.toml", &first), ("b.toml", &format!("\n\n{first}"))]);
    assert_eq!(
        got,
        "scopes/b.toml:4: name: action \"x.y\" is already defined at scopes/a.toml:2"
    );
    let twice = format!("{first}\n{first}");
    assert_eq!(
        error_in(&twice),
        "scopes/a.toml:8: name: action \"x.y\" is already defined at scopes/a.toml:2"
    );
}

#[test]
fn files_load_in_name_order() {
    // z.toml would come first in creation order; a.toml's definition wins.
    let got = error_of(&[("z.toml", &action_with("")), ("a.toml", &action_with(""))]);
    assert!(got.starts_with("scopes/z.toml:2: name: "), "{got}");
    assert!(got.ends_with("already defined at scopes/a.toml:2"), "{got}");
}

#[test]
fn check_dir_reports_every_error_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let bad_b = action_with("credential = \"/x\"\n").replace("k8s-prod:a", "nobody:a");
    fs::write(dir.path().join("b.toml"), bad_b).unwrap();
    fs::write(dir.path().join("a.toml"), "[[action]\n").unwrap();
    fs::write(
        dir.path().join("c.toml"),
        action_with("").replace("x.y", "c"),
    )
    .unwrap();
    let errors = Catalogue::check_dir(dir.path(), &trusts()).unwrap_err();
    let at: Vec<_> = errors
        .iter()
        .map(|e| {
            let loc = e.location().unwrap();
            (
                loc.file.file_name().unwrap().to_string_lossy().into_owned(),
                loc.line,
                e.key().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        at,
        [
            ("a.toml".to_owned(), 1, at[0].2.clone()),
            ("b.toml".to_owned(), 5, "agents[0]".to_owned()),
            ("b.toml".to_owned(), 6, "credential".to_owned()),
        ]
    );
    // A good directory checks clean.
    let good = tempfile::tempdir().unwrap();
    fs::write(good.path().join("c.toml"), action_with("")).unwrap();
    assert_eq!(
        Catalogue::check_dir(good.path(), &trusts()).unwrap().len(),
        1
    );
}

#[test]
fn from_sources_uses_the_given_names() {
    let cat = Catalogue::from_sources([("scopes/x.toml", action_with(""))], &trusts()).unwrap();
    assert_eq!(
        cat.get("x.y").unwrap().source.to_string(),
        "scopes/x.toml:1"
    );
    let err = Catalogue::from_sources(
        [("scopes/x.toml", action_with("delegation = \"required\"\n"))],
        &trusts(),
    )
    .unwrap_err();
    assert!(
        err.to_string().starts_with("scopes/x.toml:6: delegation: "),
        "{err}"
    );
}

// -- pattern matching ---------------------------------------------------

fn pattern(text: &str) -> SubjectPattern {
    SubjectPattern::parse(text, &trusts()).unwrap()
}

#[test]
fn bound_patterns_match_only_their_trust() {
    let p = pattern("k8s-prod:system:serviceaccount:agents:*");
    assert_eq!(p.to_string(), "k8s-prod:system:serviceaccount:agents:*");
    assert!(p.matches(&principal(
        "k8s-prod",
        "system:serviceaccount:agents:triage",
        &[]
    )));
    // colons and slashes under `*`
    assert!(p.matches(&principal(
        "k8s-prod",
        "system:serviceaccount:agents:a:b/c",
        &[]
    )));
    assert!(p.matches(&principal("k8s-prod", "system:serviceaccount:agents:", &[])));
    assert!(!p.matches(&principal(
        "k8s-prod",
        "system:serviceaccount:other:triage",
        &[]
    )));
    // same sub, another issuer
    assert!(!p.matches(&principal(
        "k8s-staging-other",
        "system:serviceaccount:agents:triage",
        &[]
    )));
    // the trust must be equal, not a prefix
    assert!(!p.matches(&principal(
        "k8s-pro",
        "system:serviceaccount:agents:triage",
        &[]
    )));
    assert!(!p.matches(&principal(
        "k8s-prod2",
        "system:serviceaccount:agents:triage",
        &[]
    )));
}

#[test]
fn spiffe_patterns_need_a_trust_speaking_for_the_domain() {
    let example = ["example.org".to_owned()];
    let other = ["other.example".to_owned()];
    let p = pattern("spiffe://example.org/agent/*");
    assert_eq!(p.trust(), None);
    assert!(p.matches(&principal(
        "spire",
        "spiffe://example.org/agent/triage",
        &example
    )));
    assert!(p.matches(&principal(
        "spire",
        "spiffe://example.org/agent/ns/x:y",
        &example
    )));
    // same sub from a trust that does not speak for example.org
    assert!(!p.matches(&principal(
        "spire-b",
        "spiffe://example.org/agent/triage",
        &other
    )));
    assert!(!p.matches(&principal(
        "k8s-prod",
        "spiffe://example.org/agent/triage",
        &[]
    )));
    // the domain is literal: no suffix or prefix tricks
    assert!(!p.matches(&principal(
        "spire",
        "spiffe://example.org.evil/agent/x",
        &example
    )));
    assert!(!p.matches(&principal(
        "spire",
        "spiffe://evil.example.org/agent/x",
        &example
    )));
    assert!(!p.matches(&principal("spire", "spiffe://example.org/agentx", &example)));
    // a bound pattern may also name SPIFFE IDs of a given trust
    let bound = pattern("spire-b:spiffe://example.org/agent/*");
    assert!(bound.matches(&principal(
        "spire-b",
        "spiffe://example.org/agent/triage",
        &other
    )));
    assert!(!bound.matches(&principal(
        "spire",
        "spiffe://example.org/agent/triage",
        &example
    )));
}

#[test]
fn literal_characters_are_literal() {
    let p = pattern("corp-idp:*@example.org");
    assert!(p.matches(&principal("corp-idp", "alice@example.org", &[])));
    assert!(p.matches(&principal("corp-idp", "@example.org", &[])));
    assert!(!p.matches(&principal("corp-idp", "alice@exampleXorg", &[])));
    assert!(!p.matches(&principal("corp-idp", "alice@example.org.evil.com", &[])));
    assert!(!p.matches(&principal("corp-idp", "alice@EXAMPLE.ORG", &[])));
    let q = pattern("corp-idp:a?b[c]");
    assert!(q.matches(&principal("corp-idp", "a?b[c]", &[])));
    assert!(!q.matches(&principal("corp-idp", "axb[c]", &[])));
    assert!(!q.matches(&principal("corp-idp", "abc", &[])));
}

#[test]
fn catch_all_and_subject_bounds() {
    let p = pattern("k8s-prod:*");
    assert!(p.is_catch_all());
    assert!(!pattern("k8s-prod:a*").is_catch_all());
    assert!(p.matches(&principal("k8s-prod", "anything:at/all", &[])));
    // Empty and over-long subjects never match.
    assert!(!p.matches(&principal("k8s-prod", "", &[])));
    let long = "a".repeat(MAX_SUBJECT_LEN + 1);
    assert!(!p.matches(&principal("k8s-prod", &long, &[])));
    let max = "a".repeat(MAX_SUBJECT_LEN);
    assert!(p.matches(&principal("k8s-prod", &max, &[])));
}

#[test]
fn pattern_parse_errors() {
    let t = trusts();
    let err = |s: &str| SubjectPattern::parse(s, &t).unwrap_err();
    assert_eq!(err(""), PatternError::Empty);
    assert!(matches!(err("alice"), PatternError::Unprefixed { .. }));
    assert!(matches!(err("*"), PatternError::Unprefixed { .. }));
    assert!(matches!(
        err("spiffe://"),
        PatternError::InvalidSpiffe { .. }
    ));
    assert!(matches!(
        err("spiffe://Example.org/x"),
        PatternError::InvalidSpiffe { .. }
    ));
    assert!(matches!(
        err("spiffe://ex ample.org/x"),
        PatternError::InvalidSpiffe { .. }
    ));
    assert!(matches!(
        err("spiffe://h:1/x"),
        PatternError::InvalidSpiffe { .. }
    ));
    assert!(matches!(
        err("SPIFFE://example.org/x"),
        PatternError::UnknownTrust { .. }
    ));
    assert!(matches!(err("*:x"), PatternError::UnknownTrust { .. }));
    let domain = "spiffe://other.example/x";
    assert_eq!(
        SubjectPattern::parse(domain, &TrustDirectory::default()).unwrap_err(),
        PatternError::UnservedDomain {
            domain: "other.example".to_owned()
        }
    );
    assert!(SubjectPattern::parse(domain, &t).is_ok());
}

// -- path templates -----------------------------------------------------

#[test]
fn path_templates_match_whole_segments() {
    let t = PathTemplate::parse("/repos/{owner}/{repo}/issues").unwrap();
    assert_eq!(t.as_str(), "/repos/{owner}/{repo}/issues");
    assert_eq!(t.params().collect::<Vec<_>>(), ["owner", "repo"]);
    assert!(t.matches("/repos/acme/widgets/issues"));
    assert_eq!(
        t.captures("/repos/acme/wid.gets/issues").unwrap(),
        [("owner", "acme"), ("repo", "wid.gets")]
    );
    for bad in [
        "/repos/acme/widgets/issues/",
        "/repos/acme/widgets/issues/1",
        "/repos/acme/issues",
        "/repos//widgets/issues",
        "/repos/acme/widgets/Issues",
        "/repos/acme/a/b/issues",
        "repos/acme/widgets/issues",
        "/repos/../widgets/issues",
        "/repos/./widgets/issues",
        "/repos/acme/w?x/issues",
        "/repos/acme/widgets/issues?state=open",
        "",
        "/",
    ] {
        assert!(!t.matches(bad), "{bad}");
    }

    let root = PathTemplate::parse("/").unwrap();
    assert!(root.matches("/"));
    assert!(!root.matches("/x"));
    assert!(!root.matches(""));
    assert!(!root.matches("//"));

    let lit = PathTemplate::parse("/api/v1.2/*").unwrap();
    assert!(lit.matches("/api/v1.2/*"));
    assert!(!lit.matches("/api/v1.2/x"));
    assert!(!lit.matches("/api/v1x2/*"));

    let trailing = PathTemplate::parse("/a/{b}").unwrap();
    assert!(trailing.matches("/a/x"));
    assert!(!trailing.matches("/a/"));
    assert!(!trailing.matches("/a"));
}

#[test]
fn path_template_errors() {
    use PathTemplateError as E;
    let err = |s: &str| PathTemplate::parse(s).unwrap_err();
    assert_eq!(err(""), E::NoLeadingSlash);
    assert_eq!(err("x/y"), E::NoLeadingSlash);
    assert_eq!(err("/x#y"), E::QueryOrFragment);
    assert_eq!(err("/x y"), E::BadCharacter);
    assert_eq!(err("/x/"), E::EmptySegment);
    assert_eq!(err("//x"), E::EmptySegment);
    assert_eq!(err("/./x"), E::DotSegment);
    assert!(matches!(err("/{a}b"), E::PartialPlaceholder { .. }));
    assert!(matches!(err("/{a"), E::PartialPlaceholder { .. }));
    assert!(matches!(err("/{{a}}"), E::PartialPlaceholder { .. }));
    assert!(matches!(err("/{}"), E::BadParamName { .. }));
    assert!(matches!(err("/{1a}"), E::BadParamName { .. }));
    assert!(matches!(err("/{a-b}"), E::BadParamName { .. }));
    assert!(matches!(err("/{a}/x/{a}"), E::DuplicateParam { .. }));
    assert!(PathTemplate::parse("/{_a1}/{b_2}").is_ok());
}

// -- the matcher --------------------------------------------------------

fn glob(p: &str, t: &str) -> bool {
    glob_match_counting(p.as_bytes(), t.as_bytes()).0
}

/// Reference matcher: dynamic programming over (pattern, text) prefixes.
fn glob_reference(p: &[u8], t: &[u8]) -> bool {
    let mut dp = vec![vec![false; t.len() + 1]; p.len() + 1];
    dp[0][0] = true;
    for i in 1..=p.len() {
        for j in 0..=t.len() {
            dp[i][j] = if p[i - 1] == b'*' {
                dp[i - 1][j] || (j > 0 && dp[i][j - 1])
            } else {
                j > 0 && dp[i - 1][j - 1] && p[i - 1] == t[j - 1]
            };
        }
    }
    dp[p.len()][t.len()]
}

#[test]
fn glob_basics() {
    assert!(glob("", ""));
    assert!(!glob("", "a"));
    assert!(glob("*", ""));
    assert!(glob("**", "abc"));
    assert!(glob("a*", "a"));
    assert!(glob("*a", "bba"));
    assert!(!glob("*a", "bab"));
    assert!(glob("a*b*c", "a:/b/:c"));
    assert!(glob("a*b*c", "abbbcbc"));
    assert!(!glob("a*b*c", "abbbcb"));
    assert!(glob("*é*", "café au lait"));
    assert!(!glob("é", "e"));
}

fn insert_stars(s: &str, positions: &[prop::sample::Index], stars: usize) -> String {
    let boundaries: Vec<usize> = s
        .char_indices()
        .map(|(i, _)| i)
        .chain(std::iter::once(s.len()))
        .collect();
    let mut cuts: Vec<usize> = positions
        .iter()
        .take(stars)
        .map(|ix| boundaries[ix.index(boundaries.len())])
        .collect();
    cuts.sort_unstable();
    let mut out = String::new();
    let mut last = 0;
    for cut in cuts {
        out.push_str(&s[last..cut]);
        out.push('*');
        last = cut;
    }
    out.push_str(&s[last..]);
    out
}

proptest! {
    #[test]
    fn pattern_with_inserted_stars_matches_the_original(
        s in "\\PC{0,200}",
        positions in prop::collection::vec(any::<prop::sample::Index>(), 8),
        stars in 0usize..8,
    ) {
        let pat = insert_stars(&s, &positions, stars);
        prop_assert!(glob(&pat, &s), "{pat:?} vs {s:?}");
        // and through the public API, bound to a trust
        prop_assume!(!pat.is_empty());
        let entry = SubjectPattern::parse(&format!("corp-idp:{pat}"), &trusts()).unwrap();
        prop_assert_eq!(entry.matches(&principal("corp-idp", &s, &[])), !s.is_empty());
        prop_assert!(!entry.matches(&principal("k8s-prod", &s, &[])));
    }

    #[test]
    fn pattern_without_stars_matches_only_itself(
        a in "[^*]{0,64}",
        b in "[^*]{0,64}",
        edit in 0usize..4,
        at in any::<prop::sample::Index>(),
    ) {
        prop_assert!(glob(&a, &a));
        prop_assert_eq!(glob(&a, &b), a == b);
        // near misses: one byte dropped, appended or prefixed
        let chars: Vec<char> = a.chars().collect();
        let near: String = match edit {
            0 if !chars.is_empty() => {
                let i = at.index(chars.len());
                chars.iter().enumerate().filter(|&(j, _)| j != i).map(|(_, c)| c).collect()
            }
            1 => format!("{a}x"),
            2 => format!("x{a}"),
            _ => format!("{a}{b}"),
        };
        prop_assert_eq!(glob(&a, &near), a == near);
    }

    #[test]
    fn matcher_agrees_with_reference(
        p in "[ab*]{0,12}",
        t in "[ab]{0,16}",
    ) {
        prop_assert_eq!(glob(&p, &t), glob_reference(p.as_bytes(), t.as_bytes()));
    }

    #[test]
    fn matcher_is_fast_on_adversarial_input(
        stars in 1usize..64,
        len in 0usize..=MAX_SUBJECT_LEN,
        tail in "[ab]{0,2}",
    ) {
        let pat = format!("{}*b", "*a".repeat(stars));
        let text = format!("{}{tail}", "a".repeat(len));
        let (matched, steps) = glob_match_counting(pat.as_bytes(), text.as_bytes());
        prop_assert!(steps <= (pat.len() + 1) * (text.len() + 1), "{steps} steps");
        // The tail may add an `a` before its `b` ("ab").
        let a_count = text.bytes().filter(|&b| b == b'a').count();
        prop_assert_eq!(matched, a_count >= stars && text.ends_with('b'));

        let entry = SubjectPattern::parse(&format!("k8s-prod:{pat}"), &trusts()).unwrap();
        let via_api = entry.matches(&principal("k8s-prod", &text, &[]));
        prop_assert_eq!(via_api, matched && text.len() <= MAX_SUBJECT_LEN);
    }

    #[test]
    fn matching_never_panics(p in "\\PC{0,300}", t in "\\PC{0,300}") {
        let _ = glob(&p, &t);
        if let Ok(entry) = SubjectPattern::parse(&p, &trusts()) {
            let domains = ["example.org".to_owned()];
            let _ = entry.matches(&principal("k8s-prod", &t, &domains));
        }
        if let Ok(template) = PathTemplate::parse(&p) {
            let _ = template.captures(&t);
        }
    }
}

#[test]
fn request_headers_are_checked_and_kept_lowercase() {
    let with_headers = |list: &str| {
        action_with(&format!(
            "[action.request]\nmethod = \"GET\"\npath = \"/x\"\nheaders = [{list}]\n"
        ))
    };
    let (_dir, good) = load(&[("a.toml", &with_headers("\"X-GitHub-Api-Version\", \"x-b\""))]);
    let shape = good.unwrap().get("x.y").unwrap().request.clone().unwrap();
    assert_eq!(shape.headers, ["x-github-api-version", "x-b"]);
    assert!(shape.forwards("x-github-api-version") && shape.forwards("accept"));
    assert!(!shape.forwards("range") && !shape.forwards("x-c"));

    let refused = [
        ("\"Range\"", "byte ranges"),
        ("\"If-Range\"", "byte ranges"),
        ("\"authorization\"", "credentials"),
        ("\"Cookie\"", "credentials"),
        ("\"accept-encoding\"", "identity encoding"),
        ("\"X-Forwarded-For\"", "client addresses"),
        ("\"x-http-method-override\"", "method and URL overrides"),
        ("\"transfer-encoding\"", "framing"),
        ("\"bad header\"", "not an HTTP field name"),
        ("\"\"", "not an HTTP field name"),
        ("\"x-a\", \"X-A\"", "listed twice"),
        ("\"accept\"", "listed twice"),
    ];
    for (list, reason) in refused {
        let e = error_in(&with_headers(list));
        assert!(
            e.starts_with("scopes/a.toml:9: request.headers["),
            "{list}: {e}"
        );
        assert!(e.contains(reason), "{list}: {e}");
    }
}

// -- reading the directory whole ------------------------------------------

/// An action that must never be served without a delegating user and a
/// credential, and the same file cut off before its `delegation` line: still valid
/// TOML, and broader (no delegation required, no credential gate).
const GATED: &str = r#"[[action]]
name = "reports.export"
audience = "https://reports.internal"
agents = ["k8s-prod:a"]
delegation = "required"
subjects = ["corp-idp:*@example.org"]
credential = "integrations/reports"
"#;

fn torn_gated() -> &'static str {
    &GATED[..GATED.find("delegation").unwrap()]
}

/// A time at which every file written by a test has long settled.
fn later() -> SystemTime {
    SystemTime::now() + Duration::from_secs(3600)
}

fn assert_whole(cat: &Catalogue) {
    let action = cat.get("reports.export").unwrap();
    assert_eq!(action.delegation, Delegation::Required);
    assert_eq!(action.credential.as_deref(), Some("integrations/reports"));
}

#[test]
fn the_torn_prefix_is_valid_toml_and_broader() {
    // Why the read has to be whole: the parser alone cannot tell.
    let torn = Catalogue::from_sources([("a.toml", torn_gated())], &trusts()).unwrap();
    let action = torn.get("reports.export").unwrap();
    assert_eq!(action.delegation, Delegation::Forbidden);
    assert!(action.credential.is_none());
}

#[test]
fn a_file_changed_during_the_read_is_read_again_whole() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.toml");
    fs::write(&path, torn_gated()).unwrap();
    fs::write(dir.path().join("b.toml"), action_with("")).unwrap();
    // The writer finishes the file just after the first read of it.
    let mut reads = 0;
    let cat = Catalogue::reload_dir_with(dir.path(), &trusts(), later(), SETTLE, &mut |p| {
        if p == path {
            reads += 1;
            if reads == 1 {
                fs::write(&path, GATED).unwrap();
            }
        }
    })
    .unwrap();
    assert_eq!(reads, 2, "read once torn (discarded), once whole");
    assert_whole(&cat);
    assert!(cat.get("x.y").is_some());
}

#[test]
fn a_file_replaced_by_rename_during_the_read_is_read_again() {
    // Same length, other inode: only the stamp tells.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.toml");
    let other = GATED.replace("reports.export", "reports.exporx");
    fs::write(&path, &other).unwrap();
    let mut first = true;
    let cat = Catalogue::reload_dir_with(dir.path(), &trusts(), later(), SETTLE, &mut |_| {
        if std::mem::take(&mut first) {
            let staged = dir.path().join("a.toml.new");
            fs::write(&staged, GATED).unwrap();
            fs::rename(&staged, &path).unwrap();
        }
    })
    .unwrap();
    assert_whole(&cat);
    assert!(cat.get("reports.exporx").is_none());
}

#[test]
fn a_file_added_during_the_read_is_noticed() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("a.toml"), GATED).unwrap();
    let mut first = true;
    let cat = Catalogue::reload_dir_with(dir.path(), &trusts(), later(), SETTLE, &mut |_| {
        if std::mem::take(&mut first) {
            fs::write(dir.path().join("b.toml"), action_with("")).unwrap();
        }
    })
    .unwrap();
    assert_eq!(cat.len(), 2);
}

#[test]
fn a_file_that_never_stops_changing_is_not_used() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.toml");
    fs::write(&path, GATED).unwrap();
    let mut reads = 0;
    let err = Catalogue::reload_dir_with(dir.path(), &trusts(), later(), SETTLE, &mut |p| {
        reads += 1;
        fs::write(p, format!("{GATED}\n# edit {reads}\n")).unwrap();
    })
    .unwrap_err();
    assert!(matches!(err, CatalogueError::Changed { .. }), "{err:?}");
    assert_eq!(err.path(), Some(path.as_path()));
    assert_eq!(reads, files::ATTEMPTS);
    assert!(
        err.to_string()
            .starts_with(&format!("{}: changed while being read", path.display())),
        "{err}"
    );
}

#[test]
fn an_unsettled_file_defers_the_whole_reload() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("a.toml"), action_with("")).unwrap();
    let b = dir.path().join("b.toml");
    fs::write(&b, torn_gated()).unwrap();
    let now = SystemTime::now();
    // Just written: nothing of the directory is used, not even the settled-looking a.
    let err = Catalogue::reload_dir(dir.path(), &trusts(), now).unwrap_err();
    match &err {
        CatalogueError::Unsettled { path, wait, settle } => {
            assert!(path == &b || path == &dir.path().join("a.toml"), "{err}");
            assert!(*wait <= SETTLE && *wait > Duration::ZERO, "{err:?}");
            assert_eq!(*settle, SETTLE);
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("not used yet"), "{err}");
    // Once settled, it is used (a torn file left alone longer than the window
    // cannot be told from a finished one: hence the deployment advice).
    let cat = Catalogue::reload_dir(dir.path(), &trusts(), now + SETTLE).unwrap();
    assert_eq!(cat.len(), 2);
    // The load at start has nothing to keep: it uses what it read whole.
    assert_eq!(Catalogue::load_dir(dir.path(), &trusts()).unwrap().len(), 2);
}

#[test]
fn a_file_modified_in_the_future_is_not_settled() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.toml");
    fs::write(&path, GATED).unwrap();
    let future = SystemTime::now() + Duration::from_secs(600);
    fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(future)
        .unwrap();
    let now = SystemTime::now() + Duration::from_secs(60);
    let err = Catalogue::reload_dir(dir.path(), &trusts(), now).unwrap_err();
    assert!(matches!(err, CatalogueError::Unsettled { .. }), "{err:?}");
    let cat = Catalogue::reload_dir(dir.path(), &trusts(), future + SETTLE).unwrap();
    assert_whole(&cat);
}

#[test]
fn an_oversize_file_is_an_error_naming_the_file_and_the_cap() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("a.toml"), GATED).unwrap();
    let big = dir.path().join("big.toml");
    let text = "# padding\n".repeat((MAX_FILE_BYTES / 10 + 1) as usize);
    assert!(text.len() as u64 > MAX_FILE_BYTES);
    fs::write(&big, &text).unwrap();
    let want = format!(
        "{}: scope file is larger than the cap of 8 MiB per file",
        big.display()
    );
    let err = Catalogue::load_dir(dir.path(), &trusts()).unwrap_err();
    assert!(
        matches!(err, CatalogueError::FileTooLarge { .. }),
        "{err:?}"
    );
    assert_eq!(err.to_string(), want);
    assert_eq!(err.path(), Some(big.as_path()));
    let err = Catalogue::reload_dir(dir.path(), &trusts(), later()).unwrap_err();
    assert_eq!(err.to_string(), want);
    let errors = Catalogue::check_dir(dir.path(), &trusts()).unwrap_err();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].to_string(), want);
}

#[test]
fn a_file_growing_past_the_cap_while_read_is_refused_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.toml");
    fs::write(&path, GATED).unwrap();
    let mut first = true;
    let err = Catalogue::reload_dir_with(dir.path(), &trusts(), later(), SETTLE, &mut |p| {
        if std::mem::take(&mut first) {
            let mut f = fs::File::options().append(true).open(p).unwrap();
            std::io::Write::write_all(&mut f, &vec![b'#'; MAX_FILE_BYTES as usize]).unwrap();
        }
    })
    .unwrap_err();
    assert!(
        matches!(err, CatalogueError::FileTooLarge { .. }),
        "{err:?}"
    );
    assert_eq!(err.path(), Some(path.as_path()));
}

#[test]
fn a_file_removed_during_the_read_is_read_again_without_it() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("a.toml"), GATED).unwrap();
    let b = dir.path().join("b.toml");
    fs::write(&b, action_with("")).unwrap();
    let mut first = true;
    let cat = Catalogue::reload_dir_with(dir.path(), &trusts(), later(), SETTLE, &mut |_| {
        if std::mem::take(&mut first) {
            fs::remove_file(&b).unwrap();
        }
    })
    .unwrap();
    assert_eq!(cat.len(), 1);
    assert_whole(&cat);
}

#[test]
fn files_over_the_catalogue_cap_together_are_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let part = "# padding\n".repeat((MAX_FILE_BYTES / 10) as usize);
    let files = MAX_CATALOGUE_BYTES / part.len() as u64 + 1;
    for i in 0..files {
        fs::write(dir.path().join(format!("p{i:02}.toml")), &part).unwrap();
    }
    let err = Catalogue::load_dir(dir.path(), &trusts()).unwrap_err();
    let last = dir.path().join(format!("p{:02}.toml", files - 1));
    assert!(
        matches!(&err, CatalogueError::CatalogueTooLarge { path, .. } if path == &last),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("cap of 32 MiB per catalogue"),
        "{err}"
    );
}

#[test]
fn only_plain_toml_names_are_scope_files() {
    for name in ["a.toml", "github.issues.toml", "a b.toml", "x-1.toml"] {
        assert!(is_scope_file_name(name), "{name}");
    }
    for name in [
        ".toml",
        "toml",
        ".a.toml",
        ".#a.toml",
        "#a.toml#",
        "#a.toml",
        "a.toml~",
        ".a.toml.swp",
        "a.toml.swp",
        "a.toml.bak",
        "a.toml.new",
        "a.TOML",
        "..data",
        "..2024_01_01_00_00_00.1",
    ] {
        assert!(!is_scope_file_name(name), "{name}");
    }
}

#[cfg(unix)]
#[test]
fn editor_temp_and_hidden_files_are_never_read() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::write(d.join("a.toml"), GATED).unwrap();
    // Each would break or widen the catalogue if it were read.
    for name in [
        ".a.toml",
        "a.toml~",
        ".a.toml.swp",
        "#a.toml#",
        "a.toml.tmp",
    ] {
        fs::write(d.join(name), torn_gated()).unwrap();
    }
    // Emacs's lock file: a dangling symlink named like a scope file.
    symlink("user@host.1234:1700000000", d.join(".#a.toml")).unwrap();
    // An unreadable hidden file is not even opened.
    fs::create_dir(d.join(".git.toml")).unwrap();
    let cat = Catalogue::load_dir(d, &trusts()).unwrap();
    assert_eq!(cat.len(), 1);
    assert_whole(&cat);
    assert_whole(&Catalogue::reload_dir(d, &trusts(), later()).unwrap());
}

/// A Kubernetes ConfigMap volume: the files live in a timestamped directory,
/// `..data` links to it, and each key is a symlink through `..data`. An update
/// writes a new timestamped directory and renames a new `..data` link over the old.
#[cfg(unix)]
struct ConfigMap {
    dir: tempfile::TempDir,
    version: u32,
}

#[cfg(unix)]
impl ConfigMap {
    fn new(files: &[(&str, &str)]) -> ConfigMap {
        let mut map = ConfigMap {
            dir: tempfile::tempdir().unwrap(),
            version: 0,
        };
        map.update(files);
        for (name, _) in files {
            std::os::unix::fs::symlink(format!("..data/{name}"), map.dir.path().join(name))
                .unwrap();
        }
        map
    }

    /// What the kubelet does for an update that keeps the same keys.
    fn update(&mut self, files: &[(&str, &str)]) {
        let d = self.dir.path();
        let old = format!("..v{}", self.version);
        self.version += 1;
        let new = format!("..v{}", self.version);
        fs::create_dir(d.join(&new)).unwrap();
        for (name, text) in files {
            fs::write(d.join(&new).join(name), text).unwrap();
        }
        std::os::unix::fs::symlink(&new, d.join("..data_tmp")).unwrap();
        fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
        if self.version > 1 {
            fs::remove_dir_all(d.join(old)).unwrap();
        }
    }
}

#[cfg(unix)]
#[test]
fn a_configmap_symlink_swap_is_reloaded_whole() {
    let narrow = GATED.replace("k8s-prod:a", "k8s-prod:only-this-one");
    let mut map = ConfigMap::new(&[("a.toml", GATED), ("b.toml", &action_with(""))]);
    let cat = Catalogue::load_dir(map.dir.path(), &trusts()).unwrap();
    assert_eq!(cat.len(), 2);
    assert_whole(&cat);

    map.update(&[("a.toml", &narrow), ("b.toml", &action_with(""))]);
    // Just swapped: not used yet; once settled, the new version is.
    let now = SystemTime::now();
    assert!(matches!(
        Catalogue::reload_dir(map.dir.path(), &trusts(), now),
        Err(CatalogueError::Unsettled { .. })
    ));
    let cat = Catalogue::reload_dir(map.dir.path(), &trusts(), now + SETTLE).unwrap();
    assert_whole(&cat);
    assert_eq!(
        cat.get("reports.export").unwrap().agents[0].to_string(),
        "k8s-prod:only-this-one"
    );
}

#[cfg(unix)]
#[test]
fn a_configmap_swap_during_the_read_never_mixes_versions() {
    // Version 1 has the action in a.toml, version 2 moved it to b.toml. Reading a.toml
    // of one and b.toml of the other would define it twice, or not at all.
    let v1_b = action_with("");
    let v2_b = format!("{}\n{GATED}", action_with(""));
    let mut map = ConfigMap::new(&[("a.toml", GATED), ("b.toml", &v1_b)]);
    let root = map.dir.path().to_owned();
    let a = root.join("a.toml");
    let mut swapped = false;
    let cat = Catalogue::reload_dir_with(&root, &trusts(), later(), SETTLE, &mut |p| {
        if p == a && !swapped {
            swapped = true;
            map.update(&[("a.toml", "# moved to b.toml\n"), ("b.toml", &v2_b)]);
        }
    })
    .unwrap();
    assert!(swapped);
    assert_eq!(cat.len(), 2);
    assert_whole(&cat);
    assert_eq!(
        cat.get("reports.export").unwrap().source.file,
        root.join("b.toml")
    );
}

/// `count` distinct valid actions, numbered from `first`.
fn many_actions(first: usize, count: usize) -> String {
    let mut text = String::new();
    for i in first..first + count {
        text.push_str(&format!(
            "[[action]]\nname = \"svc{i}.read\"\naudience = \"https://svc{i}.internal\"\nagents = [\"k8s-prod:agents:*\"]\ndelegation = \"optional\"\nsubjects = [\"corp-idp:*@example.org\"]\ncredential = \"integrations/svc{i}\"\n\n"
        ));
    }
    text
}

#[test]
fn twenty_thousand_actions_load() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("a.toml"), many_actions(0, 10_000)).unwrap();
    fs::write(dir.path().join("b.toml"), many_actions(10_000, 10_000)).unwrap();
    let cat = Catalogue::load_dir(dir.path(), &trusts()).unwrap();
    assert_eq!(cat.len(), 20_000);
    let last = cat.get("svc19999.read").unwrap();
    assert_eq!(last.source.line, 9_999 * 8 + 1);
    assert_eq!(last.source.file, dir.path().join("b.toml"));
    assert_eq!(last.credential.as_deref(), Some("integrations/svc19999"));
    // A duplicate at the very end is still found, and located.
    fs::write(dir.path().join("c.toml"), many_actions(19_999, 1)).unwrap();
    let err = Catalogue::load_dir(dir.path(), &trusts()).unwrap_err();
    assert_eq!(
        err.to_string()
            .replace(&dir.path().display().to_string(), "scopes"),
        "scopes/c.toml:2: name: action \"svc19999.read\" is already defined at scopes/b.toml:79994"
    );
}

#[test]
fn delegable_to_names_actions_of_the_same_audience() {
    let a = |name: &str, audience: &str, delegable: &str| {
        format!(
            "[[action]]\nname = \"{name}\"\naudience = \"{audience}\"\nagents = [\"k8s-prod:a\"]\ndelegable_to = [{delegable}]\n\n"
        )
    };
    let good = format!(
        "{}{}",
        a("gh.write", "https://gh", "\"gh.read\""),
        a("gh.read", "https://gh", "\"gh.read\"")
    );
    let (_dir, loaded) = load(&[("a.toml", &good)]);
    let catalogue = loaded.unwrap();
    assert_eq!(catalogue.get("gh.write").unwrap().delegable_to, ["gh.read"]);

    for (text, want) in [
        (
            a("gh.write", "https://gh", "\"gh.nope\""),
            "delegable_to[0]: no action \"gh.nope\" in the catalogue",
        ),
        (
            format!(
                "{}{}",
                a("gh.write", "https://gh", "\"docs.read\""),
                a("docs.read", "https://docs", "")
            ),
            "delegable_to[0]: action \"docs.read\" is for another audience",
        ),
        (
            a("gh.write", "https://gh", "\"Not An Action\""),
            "delegable_to[0]: invalid action name",
        ),
    ] {
        let (_dir, loaded) = load(&[("a.toml", &text)]);
        let got = match loaded {
            Err(e) => e.to_string(),
            Ok(_) => panic!("loaded: {text}"),
        };
        assert!(got.contains(want), "got {got:?}, want {want:?}");
    }
}
