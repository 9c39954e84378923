//! Helpers for the tests that drive the real `kubectl` and kube-rs against an API server (the
//! simulator's own tests, and the same checks on the real kube-apiserver).

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use crate::Simulator;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::PostParams;
use kube::runtime::wait::{await_condition, conditions};
use serde_json::Value;
use tokio::process::Command;

pub type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Every wait in these tests is bounded by this.
pub const WAIT: Duration = Duration::from_secs(20);

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The non-empty YAML documents of a file, as JSON.
pub fn documents(path: &Path) -> Result<Vec<Value>, Box<dyn std::error::Error>> {
    let text = std::fs::read_to_string(path)?;
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text)?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

pub fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>, std::io::Error> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    Ok(files)
}

/// manifests/samples/url-job.yaml, renamed `name`.
pub fn sample_job(name: &str) -> Result<Value, Box<dyn std::error::Error>> {
    let mut job = documents(&workspace_root().join("manifests/samples/url-job.yaml"))?.remove(0);
    job["metadata"]["name"] = Value::from(name);
    Ok(job)
}

pub fn crd_path() -> PathBuf {
    workspace_root().join("crds/analysisjob.yaml")
}

/// Starts a simulator and returns it with a client.
pub async fn start() -> Result<(Simulator, kube::Client), Box<dyn std::error::Error>> {
    let sim = Simulator::start().await?;
    let client = sim.client()?;
    Ok((sim, client))
}

/// Creates the AnalysisJob CRD from crds/analysisjob.yaml and waits until it is Established.
pub async fn install_crd(client: &kube::Client) -> TestResult {
    let crd: CustomResourceDefinition = serde_json::from_value(documents(&crd_path())?.remove(0))?;
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    api.create(&PostParams::default(), &crd).await?;
    let name = crd.metadata.name.clone().unwrap_or_default();
    tokio::time::timeout(WAIT, await_condition(api, &name, conditions::is_crd_established())).await??;
    Ok(())
}

/// The real `kubectl`, with a kubeconfig and a discovery cache of its own.
pub struct Kubectl {
    dir: tempfile::TempDir,
}

impl Kubectl {
    /// Its kubeconfig is written to [`Kubectl::kubeconfig`] by the caller.
    pub fn new() -> Result<Self, Box<dyn std::error::Error>> {
        assert!(
            Path::new("/usr/bin/kubectl").exists()
                || std::process::Command::new("kubectl")
                    .arg("version")
                    .arg("--client")
                    .output()
                    .is_ok(),
            "kubectl is not installed: these tests need the kubectl binary on PATH"
        );
        Ok(Self {
            dir: tempfile::tempdir()?,
        })
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    /// `kubectl apply`s crds/analysisjob.yaml (a new CRD) and waits until it is Established.
    pub async fn install_crd(&self) -> TestResult {
        let out = self.ok(&["apply", "-f", path_str(&crd_path())]).await?;
        assert!(
            out.contains("customresourcedefinition.apiextensions.k8s.io/analysisjobs.streamscan.io created"),
            "{out}"
        );
        self.ok(&[
            "wait",
            "--for=condition=Established",
            "crd/analysisjobs.streamscan.io",
            "--timeout=20s",
        ])
        .await?;
        Ok(())
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("kubectl");
        cmd.args(args)
            .env("KUBECONFIG", self.dir.path().join("kubeconfig"))
            .env("KUBECACHEDIR", self.dir.path().join("cache"))
            .env("HOME", self.dir.path())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    }

    pub async fn run(&self, args: &[&str]) -> Result<Output, Box<dyn std::error::Error>> {
        Ok(tokio::time::timeout(WAIT, self.command(args).output()).await??)
    }

    /// Runs and requires success; returns stdout.
    pub async fn ok(&self, args: &[&str]) -> Result<String, Box<dyn std::error::Error>> {
        let out = self.run(args).await?;
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        if !out.status.success() {
            return Err(format!("kubectl {args:?} failed: {stdout}{stderr}").into());
        }
        Ok(stdout.into_owned())
    }

    /// Runs and requires failure; returns stdout and stderr together.
    pub async fn fails(&self, args: &[&str]) -> Result<String, Box<dyn std::error::Error>> {
        let out = self.run(args).await?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() {
            return Err(format!("kubectl {args:?} succeeded, expected a refusal: {text}").into());
        }
        Ok(text)
    }

    pub fn write(&self, name: &str, doc: &serde_json::Value) -> Result<PathBuf, Box<dyn std::error::Error>> {
        let path = self.dir.path().join(name);
        std::fs::write(&path, serde_json::to_string_pretty(doc)?)?;
        Ok(path)
    }
}

/// `kubectl apply -f manifests/samples`: each sample is created; a second apply changes nothing.
pub async fn apply_samples(kubectl: &Kubectl) -> TestResult {
    let samples = workspace_root().join("manifests/samples");
    let out = kubectl.ok(&["apply", "-f", path_str(&samples)]).await?;
    for name in ["archive-upload", "firmware-from-url", "disk-image-from-volume"] {
        assert!(
            out.contains(&format!("analysisjob.streamscan.io/{name} created")),
            "{out}"
        );
    }
    let again = kubectl.ok(&["apply", "-f", path_str(&samples)]).await?;
    assert!(again.contains("firmware-from-url unchanged"), "{again}");
    Ok(())
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

/// One file of `e2e/fixtures/invalid`: its documents (one to create, or a valid one and an update)
/// and the message its `# expect:` line says the refusal contains.
pub struct InvalidFixture {
    pub path: PathBuf,
    pub expected: String,
    pub docs: Vec<Value>,
}

/// Every file of `e2e/fixtures/invalid`.
pub fn invalid_fixtures() -> Result<Vec<InvalidFixture>, Box<dyn std::error::Error>> {
    let mut out = Vec::new();
    for path in yaml_files(&workspace_root().join("e2e/fixtures/invalid"))? {
        let text = std::fs::read_to_string(&path)?;
        let expected = text
            .lines()
            .find_map(|l| l.strip_prefix("# expect: "))
            .ok_or_else(|| format!("{}: no `# expect:` line", path.display()))?
            .to_owned();
        let docs = documents(&path)?;
        out.push(InvalidFixture { path, expected, docs });
    }
    Ok(out)
}

/// Every file of `e2e/fixtures/invalid` is refused by `kubectl apply` with the message its
/// `# expect:` line names (a two-document file: the first is applied, the second refused).
pub async fn every_invalid_fixture_is_refused(kubectl: &Kubectl) -> TestResult {
    for InvalidFixture { path, expected, docs } in invalid_fixtures()? {
        let expected = expected.as_str();
        let refused = match docs.as_slice() {
            [only] => kubectl.write("only.json", only)?,
            [first, second] => {
                kubectl
                    .ok(&["apply", "-f", path_str(&kubectl.write("first.json", first)?)])
                    .await?;
                kubectl.write("second.json", second)?
            }
            _ => return Err(format!("{} has an unexpected shape", path.display()).into()),
        };
        let output = kubectl.fails(&["apply", "-f", path_str(&refused)]).await?;
        assert!(
            output.contains(expected),
            "{}: {output:?} lacks {expected:?}",
            path.display()
        );
        assert!(output.contains("is invalid"), "{output}");
    }
    Ok(())
}

/// `kubectl get aj` prints the printer columns, with the sample `firmware-from-url` Running on
/// server 3 at 40 % (as the callers' status patch set it).
pub async fn assert_printer_columns(kubectl: &Kubectl) -> TestResult {
    let table = kubectl.ok(&["get", "aj"]).await?;
    let header: Vec<&str> = table.lines().next().unwrap_or_default().split_whitespace().collect();
    assert_eq!(header, ["NAME", "PHASE", "SERVER", "PROGRESS", "AGE"], "{table}");
    let row = table
        .lines()
        .find(|l| l.starts_with("firmware-from-url"))
        .ok_or("no row")?;
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&cells[..4], ["firmware-from-url", "Running", "3", "40"], "{table}");
    Ok(())
}

/// An Events recorder as the controller's, and the Normal `Placed` Event it publishes.
pub fn placed_event(
    client: kube::Client,
    note: &str,
) -> (kube::runtime::events::Recorder, kube::runtime::events::Event) {
    use kube::runtime::events::{Event, EventType, Recorder, Reporter};
    let recorder = Recorder::new(
        client,
        Reporter {
            controller: "streamscan-controller".into(),
            instance: None,
        },
    );
    let event = Event {
        type_: EventType::Normal,
        reason: "Placed".into(),
        note: Some(note.into()),
        action: "Place".into(),
        secondary: None,
    };
    (recorder, event)
}
