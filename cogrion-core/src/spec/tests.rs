use std::fmt::Debug;

use proptest::prelude::*;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::*;
use crate::ids::{InvalidValue, KubernetesVersion, NetworkCidr, NodePoolSize, StackName, TenantId};

// ---- fixtures ----------------------------------------------------------------------

fn pool(name: &str) -> NodePoolSpec {
    NodePoolSpec {
        name: name.parse().unwrap(),
        instance_type: "m6i.large".parse().unwrap(),
        size: NodePoolSize::new(1, 2, 3).unwrap(),
        labels: BTreeMap::new(),
    }
}

fn workspace(cloud: CloudTarget, region: &str) -> WorkspaceSpec {
    WorkspaceSpec {
        tenant: "acme".parse().unwrap(),
        cloud,
        region: region.parse().unwrap(),
        kubernetes_version: "1.34".parse().unwrap(),
        network: NetworkSpec {
            cidr: "10.0.0.0/16".parse().unwrap(),
            pod_cidr: None,
            service_cidr: None,
            private_endpoint: false,
        },
        node_pools: vec![pool("general")],
        overrides: TemplateOverrides::default(),
    }
}

fn simulated() -> WorkspaceSpec {
    workspace(CloudTarget::Simulated, "sim-local-1")
}

/// A workspace using every optional field.
fn full_workspace(cloud: CloudTarget, region: &str) -> WorkspaceSpec {
    let mut spec = workspace(cloud, region);
    spec.network.pod_cidr = Some("100.64.0.0/16".parse().unwrap());
    spec.network.service_cidr = Some("172.20.0.0/16".parse().unwrap());
    spec.network.private_endpoint = true;
    let mut gpu = pool("gpu");
    gpu.size = NodePoolSize::new(0, 0, 8).unwrap();
    gpu.labels = BTreeMap::from([
        ("nvidia.com/gpu.present".to_owned(), "true".to_owned()),
        ("team".to_owned(), String::new()),
    ]);
    spec.node_pools.push(gpu);
    spec.overrides.tags = BTreeMap::from([("cost-center".to_owned(), "R&D 42".to_owned())]);
    spec.overrides.parameters = BTreeMap::from([
        (
            "eks.endpoint_public_access_cidrs".to_owned(),
            json!(["203.0.113.0/24"]),
        ),
        ("node.disk_gib".to_owned(), json!(100)),
    ]);
    spec
}

fn aws() -> CloudTarget {
    CloudTarget::Aws {
        account_id: "123456789012".parse().unwrap(),
        role_arn: Some(
            "arn:aws:iam::123456789012:role/platform/cogrion"
                .parse()
                .unwrap(),
        ),
    }
}

fn gcp() -> CloudTarget {
    CloudTarget::Gcp {
        project_id: "acme-prod-42".parse().unwrap(),
    }
}

fn azure() -> CloudTarget {
    CloudTarget::Azure {
        subscription_id: "0B1F6471-1BF0-4DDA-AEC3-CB9272F09590".parse().unwrap(),
        resource_group: "rg-acme_prod(1)".parse().unwrap(),
    }
}

fn stack(executor: ExecutorSpec) -> StackSpec {
    StackSpec {
        name: "ingress".parse().unwrap(),
        kind: StackKind::InfraAddon,
        executor,
        depends_on: BTreeSet::new(),
    }
}

fn helm() -> ExecutorSpec {
    ExecutorSpec::Helm {
        source: "ingress-nginx/ingress-nginx".into(),
        version: "4.13.0".into(),
        values: serde_json::Map::new(),
    }
}

fn manifests(documents: Vec<Value>) -> ExecutorSpec {
    ExecutorSpec::Manifests { documents }
}

fn config_map(name: &str) -> Value {
    json!({ "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": name } })
}

fn terraform(variables: BTreeMap<String, Value>) -> ExecutorSpec {
    ExecutorSpec::Terraform {
        source: "./modules/rds".into(),
        variables,
    }
}

fn paths(result: Result<(), SpecErrors>) -> Vec<String> {
    match result {
        Ok(()) => Vec::new(),
        Err(e) => e.problems.into_iter().map(|p| p.path).collect(),
    }
}

fn ws_paths(spec: &WorkspaceSpec) -> Vec<String> {
    paths(spec.validate())
}

fn stack_paths(spec: &StackSpec) -> Vec<String> {
    paths(spec.validate())
}

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(value: &T) {
    let text = serde_json::to_string(value).unwrap();
    let back: T = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(&back, value);
    let back: T = serde_json::from_value(serde_json::to_value(value).unwrap()).unwrap();
    assert_eq!(&back, value);
}

// ---- cloud account identifiers -------------------------------------------------------

#[test]
fn aws_account_ids() {
    for ok in ["123456789012", "000000000000"] {
        assert!(AwsAccountId::new(ok).is_ok(), "{ok}");
    }
    for bad in [
        "",
        "12345678901",
        "1234567890123",
        "12345678901a",
        " 123456789012",
        "1234-5678-90",
    ] {
        assert!(AwsAccountId::new(bad).is_err(), "{bad}");
    }
    assert!(matches!(
        AwsAccountId::new("12345"),
        Err(InvalidValue::OutOfRange { .. })
    ));
}

#[test]
fn aws_role_arns() {
    let long_name = "n".repeat(64);
    for ok in [
        "arn:aws:iam::123456789012:role/cogrion".to_owned(),
        "arn:aws-cn:iam::123456789012:role/a/b/c".to_owned(),
        "arn:aws-us-gov:iam::123456789012:role/x+=,.@_-y".to_owned(),
        "arn:aws-iso-b:iam::123456789012:role/r".to_owned(),
        format!("arn:aws:iam::123456789012:role/path/{long_name}"),
    ] {
        assert!(AwsRoleArn::new(&ok).is_ok(), "{ok}");
    }
    for bad in [
        String::new(),
        "arn:aws:iam::123456789012:role/".into(),
        "arn:aws:iam::123456789012:role//x".into(),
        "arn:aws:iam::123456789012:role/x/".into(),
        "arn:aws:iam::123456789012:user/x".into(),
        "arn:aws:s3:::bucket".into(),
        "arn:aws:iam:us-east-1:123456789012:role/x".into(),
        "arn:azure:iam::123456789012:role/x".into(),
        "arn:aws:iam::12345678901:role/x".into(),
        "arn:aws:iam::123456789012:role/x y".into(),
        "aws:iam::123456789012:role/x".into(),
        format!("arn:aws:iam::123456789012:role/{long_name}n"),
        format!("arn:aws:iam::123456789012:role/{}", "p/".repeat(1100)),
    ] {
        assert!(AwsRoleArn::new(&bad).is_err(), "{bad}");
    }
    let arn = AwsRoleArn::new("arn:aws-us-gov:iam::000000000001:role/a/b/deployer").unwrap();
    assert_eq!(arn.partition(), "aws-us-gov");
    assert_eq!(arn.account_id(), "000000000001");
    assert_eq!(arn.role_name(), "deployer");
    // The offending character's offset is into the whole ARN.
    let bad = "arn:aws:iam::123456789012:role/ab#c";
    match AwsRoleArn::new(bad) {
        Err(InvalidValue::BadCharacter { found, at, .. }) => {
            assert_eq!((found, at), ('#', bad.find('#').unwrap()));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn gcp_project_ids() {
    for ok in ["acme-prod", "a12345", &format!("a{}", "b".repeat(29))] {
        assert!(GcpProjectId::new(ok).is_ok(), "{ok}");
    }
    for bad in [
        "acme",
        "Acme-prod",
        "acme-prod-",
        "1acme-prod",
        "acme_prod",
        "example.com:acme",
        &"a".repeat(31),
    ] {
        assert!(GcpProjectId::new(bad).is_err(), "{bad}");
    }
}

#[test]
fn azure_subscription_ids() {
    let id = AzureSubscriptionId::new("0B1F6471-1bf0-4DDA-aec3-CB9272F09590").unwrap();
    assert_eq!(id.as_str(), "0b1f6471-1bf0-4dda-aec3-cb9272f09590");
    assert_eq!(
        id,
        "0b1f6471-1bf0-4dda-aec3-cb9272f09590"
            .parse::<AzureSubscriptionId>()
            .unwrap()
    );
    for bad in [
        "",
        "0b1f64711bf04ddaaec3cb9272f09590",
        "0b1f6471-1bf0-4dda-aec3-cb9272f0959",
        "0b1f6471-1bf0-4dda-aec3-cb9272f095900",
        "0b1f6471-1bf0-4dda-aec3-cb9272f0959g",
        "{0b1f6471-1bf0-4dda-aec3-cb9272f09590}",
        "0b1f64711-bf0-4dda-aec3-cb9272f09590",
        "0b1f6471-1bf0-4dda-aec3cb9272f09590-",
    ] {
        assert!(AzureSubscriptionId::new(bad).is_err(), "{bad}");
    }
}

#[test]
fn azure_resource_groups() {
    for ok in ["rg", "a", "My_RG-(prod).1", &"r".repeat(90)] {
        assert!(AzureResourceGroup::new(ok).is_ok(), "{ok}");
    }
    for bad in ["", "rg.", "rg acme", "rg/x", "grüppe", &"r".repeat(91)] {
        assert!(AzureResourceGroup::new(bad).is_err(), "{bad}");
    }
}

// ---- round trips ---------------------------------------------------------------------

#[test]
fn workspace_specs_round_trip_for_every_cloud() {
    for (cloud, region) in [
        (aws(), "us-east-1"),
        (gcp(), "europe-west1"),
        (azure(), "westeurope"),
        (CloudTarget::Simulated, "sim-local-1"),
    ] {
        let spec = full_workspace(cloud, region);
        assert_eq!(spec.validate(), Ok(()));
        round_trip(&spec);
        assert_eq!(
            WorkspaceSpec::from_json(&serde_json::to_string(&spec).unwrap()),
            Ok(spec.clone())
        );
        // The minimal form too (optional fields left out when serialised).
        round_trip(&workspace(spec.cloud.clone(), region));
    }
}

#[test]
fn serialised_shape_is_unchanged() {
    let mut spec = workspace(
        CloudTarget::Aws {
            account_id: "123456789012".parse().unwrap(),
            role_arn: None,
        },
        "us-east-1",
    );
    spec.node_pools[0]
        .labels
        .insert("team".into(), "web".into());
    assert_eq!(
        serde_json::to_value(&spec).unwrap(),
        json!({
            "tenant": "acme",
            "cloud": { "provider": "aws", "account_id": "123456789012" },
            "region": "us-east-1",
            "kubernetes_version": "1.34",
            "network": { "cidr": "10.0.0.0/16", "private_endpoint": false },
            "node_pools": [{
                "name": "general",
                "instance_type": "m6i.large",
                "size": { "min": 1, "desired": 2, "max": 3 },
                "labels": { "team": "web" }
            }],
            "overrides": {}
        })
    );
    assert_eq!(
        serde_json::to_value(azure()).unwrap(),
        json!({
            "provider": "azure",
            "subscription_id": "0b1f6471-1bf0-4dda-aec3-cb9272f09590",
            "resource_group": "rg-acme_prod(1)"
        })
    );
}

#[test]
fn stack_specs_round_trip_for_every_executor() {
    let mut values = serde_json::Map::new();
    values.insert(
        "controller".into(),
        json!({ "replicaCount": 2, "service": { "type": "LoadBalancer" } }),
    );
    let executors = [
        ExecutorSpec::Helm {
            source: "oci://registry-1.docker.io/bitnamicharts/nginx".into(),
            version: "18.2.4".into(),
            values,
        },
        manifests(vec![config_map("settings"), config_map("more-settings")]),
        terraform(BTreeMap::from([
            ("instance_class".to_owned(), json!("db.t4g.medium")),
            ("multi_az".to_owned(), json!(true)),
            ("subnets".to_owned(), json!(["a", "b"])),
        ])),
    ];
    for executor in executors {
        let mut spec = stack(executor);
        spec.kind = StackKind::Application;
        spec.depends_on = ["cert-manager", "external-dns"]
            .iter()
            .map(|n| n.parse().unwrap())
            .collect();
        assert_eq!(spec.validate(), Ok(()));
        round_trip(&spec);
        assert_eq!(
            StackSpec::from_json(&serde_json::to_string(&spec).unwrap()),
            Ok(spec.clone())
        );
        round_trip(&stack(spec.executor.clone()));
    }
}

// ---- field problems --------------------------------------------------------------------

const MANY_FIELD_PROBLEMS: &str = r#"{
    "tenant": "ACME Corp",
    "cloud": { "provider": "aws", "account_id": "1234", "role_arn": "arn:aws:iam::123456789012:user/x" },
    "region": "us-east-1",
    "kubernetes_version": "1.34.2",
    "network": { "cidr": "8.8.0.0/16", "pod_cidr": "100.64.0.0/16", "service_cidr": "10.0.0.1/16" },
    "node_pools": [
        { "name": "general", "instance_type": "m6i.large", "size": { "min": 3, "desired": 1, "max": 5 } },
        { "name": "GPU", "instance_type": "g5 xlarge", "size": { "min": 0, "desired": 0, "max": 0 } }
    ]
}"#;

#[test]
fn every_field_problem_is_reported_with_its_path() {
    let errors = WorkspaceSpec::from_json(MANY_FIELD_PROBLEMS).unwrap_err();
    let found: Vec<_> = errors.problems.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        found,
        [
            "tenant",
            "cloud.account_id",
            "cloud.role_arn",
            "kubernetes_version",
            "network.cidr",
            "network.service_cidr",
            "node_pools[0].size",
            "node_pools[1].name",
            "node_pools[1].instance_type",
            "node_pools[1].size",
        ]
    );
    assert!(errors.problems[0].message.contains("tenant id"), "{errors}");
    assert!(
        errors.problems[4].message.contains("private range"),
        "{errors}"
    );
}

#[test]
fn plain_serde_reports_every_field_problem_in_one_error() {
    let message = serde_json::from_str::<WorkspaceSpec>(MANY_FIELD_PROBLEMS)
        .unwrap_err()
        .to_string();
    for path in ["tenant: ", "network.cidr: ", "node_pools[0].size: "] {
        assert!(message.contains(path), "{path} missing from {message}");
    }
    // The nested types deserialised on their own report all their problems too.
    let message = serde_json::from_str::<NetworkSpec>(
        r#"{ "cidr": "10.0.0.0/8", "pod_cidr": "11.0.0.0/16" }"#,
    )
    .unwrap_err()
    .to_string();
    assert!(
        message.contains("cidr: ") && message.contains("pod_cidr: "),
        "{message}"
    );
}

#[test]
fn wrongly_typed_checked_fields_are_collected() {
    let errors = WorkspaceSpec::from_json(
        r#"{
        "tenant": 42,
        "cloud": { "provider": "gcp", "project_id": null },
        "region": "europe-west1",
        "kubernetes_version": 1.34,
        "network": { "cidr": "10.0.0.0/16" },
        "node_pools": [{ "name": "general", "instance_type": "e2-standard-4", "size": 3 }]
    }"#,
    )
    .unwrap_err();
    let found: Vec<_> = errors.problems.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        found,
        [
            "tenant",
            "cloud.project_id",
            "kubernetes_version",
            "node_pools[0].size"
        ]
    );
}

#[test]
fn stack_field_problems_are_all_reported() {
    let errors = StackSpec::from_json(
        r#"{
        "name": "Ingress NGINX",
        "kind": "infra_addon",
        "executor": { "type": "helm", "source": "ingress-nginx/ingress-nginx", "version": "4.13.0" },
        "depends_on": ["cert-manager", "external_dns", "-bad"]
    }"#,
    )
    .unwrap_err();
    let found: Vec<_> = errors.problems.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(found, ["name", "depends_on[1]", "depends_on[2]"]);
}

#[test]
fn structural_problems_are_one_problem_at_the_root() {
    let mut doc = serde_json::to_value(simulated()).unwrap();
    doc["network"]["nat_gateway"] = json!(true);
    let errors = WorkspaceSpec::from_json(&doc.to_string()).unwrap_err();
    assert_eq!(errors.problems.len(), 1);
    assert_eq!(errors.problems[0].path, "");
    assert!(
        errors.problems[0]
            .message
            .contains("unknown field `nat_gateway`"),
        "{errors}"
    );

    let mut doc = serde_json::to_value(simulated()).unwrap();
    doc.as_object_mut().unwrap().remove("tenant");
    let errors = WorkspaceSpec::from_json(&doc.to_string()).unwrap_err();
    assert_eq!(errors.problems.len(), 1);
    assert!(
        errors.problems[0]
            .message
            .contains("missing field `tenant`")
    );

    let errors = StackSpec::from_json("{ not json").unwrap_err();
    assert_eq!(errors.problems.len(), 1);
    assert_eq!(errors.problems[0].path, "");
    assert!(!errors.to_string().contains(": :"), "{errors}");

    let errors = StackSpec::from_json(
        r#"{ "name": "x", "kind": "infra_addon", "executor": { "type": "kustomize" } }"#,
    )
    .unwrap_err();
    assert_eq!(errors.problems.len(), 1);
}

#[test]
fn field_problems_are_returned_before_semantic_ones() {
    let mut doc = serde_json::to_value(simulated()).unwrap();
    doc["tenant"] = json!("Acme");
    doc["kubernetes_version"] = json!("1.20");
    let errors = WorkspaceSpec::from_json(&doc.to_string()).unwrap_err();
    let found: Vec<_> = errors.problems.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(found, ["tenant"]);
}

// ---- semantic rules: workspaces ------------------------------------------------------

#[test]
fn unsupported_kubernetes_version_reads_but_does_not_validate() {
    let mut doc = serde_json::to_value(simulated()).unwrap();
    doc["kubernetes_version"] = json!("1.20");
    let spec: WorkspaceSpec = serde_json::from_value(doc.clone()).unwrap();
    assert_eq!(spec.kubernetes_version.minor(), 20);
    assert_eq!(ws_paths(&spec), ["kubernetes_version"]);
    let errors = WorkspaceSpec::from_json(&doc.to_string()).unwrap_err();
    assert_eq!(errors.problems[0].path, "kubernetes_version");
    assert!(errors.problems[0].message.contains("1.20 is not supported"));
}

#[test]
fn regions_have_their_clouds_shape() {
    let cases = [
        (
            aws(),
            &[
                "us-east-1",
                "us-gov-west-1",
                "us-iso-east-1",
                "us-isob-east-1",
                "eu-central-2",
                "ap-southeast-4",
            ][..],
            &[
                "europe-west1",
                "westeurope",
                "us-east",
                "useast-1",
                "u-east-1",
                "use-east-1",
                "us-gov-west",
                "us-isoxx-east-1",
                "us--east-1",
                "us-east-1a",
                "us-east-1-1",
                "us-gov-west-1x",
            ][..],
        ),
        (
            gcp(),
            &[
                "europe-west1",
                "us-central1",
                "northamerica-northeast2",
                "me-central2",
            ][..],
            &[
                "us-east-1",
                "westeurope",
                "europe-west",
                "europe-1",
                "europe-west1-b",
                "europe-west1b",
            ][..],
        ),
        (
            azure(),
            &["westeurope", "eastus2", "uksouth"][..],
            &["west-europe", "us-east-1"][..],
        ),
        (
            CloudTarget::Simulated,
            &["sim-local-1", "anything-goes", "westeurope"][..],
            &[][..],
        ),
    ];
    for (cloud, good, bad) in cases {
        for region in good {
            let spec = workspace(cloud.clone(), region);
            assert_eq!(ws_paths(&spec), Vec::<String>::new(), "{region}");
        }
        for region in bad {
            let spec = workspace(cloud.clone(), region);
            assert_eq!(ws_paths(&spec), ["region"], "{region} for {cloud:?}");
        }
    }
}

#[test]
fn the_role_is_in_the_workspaces_account() {
    let spec = workspace(
        CloudTarget::Aws {
            account_id: "123456789012".parse().unwrap(),
            role_arn: Some("arn:aws:iam::210987654321:role/cogrion".parse().unwrap()),
        },
        "eu-west-1",
    );
    assert_eq!(ws_paths(&spec), ["cloud.role_arn"]);
}

#[test]
fn node_pool_count_is_bounded() {
    let mut spec = simulated();
    spec.node_pools.clear();
    assert_eq!(ws_paths(&spec), ["node_pools"]);
    spec.node_pools = (0..32).map(|i| pool(&format!("pool-{i}"))).collect();
    assert_eq!(ws_paths(&spec), Vec::<String>::new());
    spec.node_pools.push(pool("one-too-many"));
    assert_eq!(ws_paths(&spec), ["node_pools"]);
}

#[test]
fn node_pool_names_are_unique() {
    let mut spec = simulated();
    spec.node_pools = vec![
        pool("general"),
        pool("gpu"),
        pool("general"),
        pool("general"),
    ];
    let errors = spec.validate().unwrap_err();
    let found: Vec<_> = errors.problems.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(found, ["node_pools[2].name", "node_pools[3].name"]);
    assert!(errors.problems[1].message.contains("node_pools[0]"));
}

#[test]
fn network_ranges_do_not_overlap() {
    let cidr = |s: &str| Some(s.parse::<NetworkCidr>().unwrap());
    let mut spec = simulated();
    spec.network.pod_cidr = cidr("10.0.128.0/20");
    assert_eq!(ws_paths(&spec), ["network.pod_cidr"]);

    spec.network.pod_cidr = None;
    spec.network.service_cidr = cidr("10.0.0.0/16");
    assert_eq!(ws_paths(&spec), ["network.service_cidr"]);

    spec.network.pod_cidr = cidr("100.64.0.0/16");
    spec.network.service_cidr = cidr("100.64.16.0/20");
    let errors = spec.validate().unwrap_err();
    assert_eq!(errors.problems.len(), 1);
    assert_eq!(errors.problems[0].path, "network.service_cidr");
    assert!(errors.problems[0].message.contains("pod range"));

    spec.network.service_cidr = cidr("100.65.0.0/16");
    assert_eq!(ws_paths(&spec), Vec::<String>::new());
}

#[test]
fn node_pool_labels_follow_kubernetes_rules() {
    let name63 = "n".repeat(63);
    let prefix253 = format!("{}.example.com", "a".repeat(241));
    assert_eq!(prefix253.len(), 253);
    let good_keys = [
        "team".to_owned(),
        "app.kubernetes.io/name".to_owned(),
        "node.example.com/pool-tier".to_owned(),
        "A_b.c-D".to_owned(),
        "1".to_owned(),
        name63.clone(),
        format!("{prefix253}/x"),
    ];
    for key in &good_keys {
        assert!(rules::label_key(key).is_ok(), "{key}");
    }
    let bad_keys = [
        String::new(),
        "/name".into(),
        "Example.com/name".into(),
        "example.com/".into(),
        "a/b/c".into(),
        "-name".into(),
        "name-".into(),
        "na me".into(),
        "example..com/name".into(),
        "-example.com/name".into(),
        format!("{name63}n"),
        format!("a{prefix253}/x"),
    ];
    for key in &bad_keys {
        assert!(rules::label_key(key).is_err(), "{key}");
    }
    for value in ["", "v1", "a.b_c-D", name63.as_str()] {
        assert!(rules::label_value(value).is_ok(), "{value}");
    }
    for value in ["-x", "x-", "a b", "é", &format!("{name63}n")] {
        assert!(rules::label_value(value).is_err(), "{value}");
    }

    let mut spec = simulated();
    spec.node_pools.push(pool("gpu"));
    spec.node_pools[1].labels = BTreeMap::from([
        ("Bad Key".to_owned(), "ok".to_owned()),
        ("good".to_owned(), "-bad-value".to_owned()),
        ("team".to_owned(), String::new()),
    ]);
    assert_eq!(
        ws_paths(&spec),
        [
            r#"node_pools[1].labels["Bad Key"]"#,
            r#"node_pools[1].labels["good"]"#
        ]
    );

    let mut spec = simulated();
    spec.node_pools[0].labels = (0..64).map(|i| (format!("l{i}"), String::new())).collect();
    assert_eq!(ws_paths(&spec), Vec::<String>::new());
    spec.node_pools[0]
        .labels
        .insert("l64".into(), String::new());
    assert_eq!(ws_paths(&spec), ["node_pools[0].labels"]);
}

#[test]
fn override_tags_are_bounded_and_cogrion_keys_reserved() {
    let mut spec = simulated();
    spec.overrides.tags = (0..50).map(|i| (format!("t{i}"), "v".into())).collect();
    assert_eq!(ws_paths(&spec), Vec::<String>::new());
    spec.overrides.tags.insert("t50".into(), "v".into());
    assert_eq!(ws_paths(&spec), ["overrides.tags"]);

    for (key, value, ok) in [
        ("k".to_owned(), "v".repeat(256), true),
        ("ключ".to_owned(), "значение".to_owned(), true),
        ("k".repeat(128), String::new(), true),
        ("cogrio".to_owned(), "x".to_owned(), true),
        ("my-cogrion".to_owned(), "x".to_owned(), true),
        ("k".to_owned(), "v".repeat(257), false),
        (String::new(), "x".to_owned(), false),
        ("k".repeat(129), "x".to_owned(), false),
        ("cogrion:workspace".to_owned(), "x".to_owned(), false),
        ("Cogrion-Owner".to_owned(), "x".to_owned(), false),
        ("COGRION".to_owned(), "x".to_owned(), false),
    ] {
        let mut spec = simulated();
        spec.overrides.tags.insert(key.clone(), value);
        let expected = if ok {
            Vec::new()
        } else {
            vec![entry("overrides.tags", &key)]
        };
        assert_eq!(ws_paths(&spec), expected, "{key}");
    }
}

#[test]
fn override_parameters_are_named_and_bounded() {
    for (name, ok) in [
        ("eks.endpoint_public_access_cidrs".to_owned(), true),
        ("a".to_owned(), true),
        ("gke.node-locations".to_owned(), true),
        (format!("a{}", "b".repeat(127)), true),
        (String::new(), false),
        ("Eks.x".to_owned(), false),
        ("1abc".to_owned(), false),
        ("eks endpoint".to_owned(), false),
        (format!("a{}", "b".repeat(128)), false),
    ] {
        let mut spec = simulated();
        spec.overrides.parameters.insert(name.clone(), json!(1));
        let expected = if ok {
            Vec::new()
        } else {
            vec![entry("overrides.parameters", &name)]
        };
        assert_eq!(ws_paths(&spec), expected, "{name}");
    }

    // {"a":"xx…x"} is 8 bytes plus the string.
    let mut spec = simulated();
    let filler = |n: usize| BTreeMap::from([("a".to_owned(), json!("x".repeat(n)))]);
    spec.overrides.parameters = filler(64 * 1024 - 8);
    assert_eq!(rules::json_len(&spec.overrides.parameters), 64 * 1024);
    assert_eq!(ws_paths(&spec), Vec::<String>::new());
    spec.overrides.parameters = filler(64 * 1024 - 7);
    assert_eq!(ws_paths(&spec), ["overrides.parameters"]);
}

#[test]
fn every_semantic_problem_is_reported_in_field_order() {
    let mut spec = workspace(gcp(), "us-east-1");
    spec.kubernetes_version = "1.20".parse().unwrap();
    spec.network.pod_cidr = Some("10.0.0.0/20".parse().unwrap());
    spec.node_pools = vec![pool("a"), pool("a")];
    spec.node_pools[0]
        .labels
        .insert("bad key".into(), "v".into());
    spec.overrides
        .tags
        .insert("cogrion.io/owner".into(), "me".into());
    spec.overrides.parameters.insert("Bad".into(), json!(null));
    assert_eq!(
        ws_paths(&spec),
        [
            "region",
            "kubernetes_version",
            "network.pod_cidr",
            r#"node_pools[0].labels["bad key"]"#,
            "node_pools[1].name",
            r#"overrides.tags["cogrion.io/owner"]"#,
            r#"overrides.parameters["Bad"]"#,
        ]
    );
    // from_json reports the same list.
    let errors = WorkspaceSpec::from_json(&serde_json::to_string(&spec).unwrap()).unwrap_err();
    assert_eq!(errors.problems.len(), 7);
}

// ---- semantic rules: stacks ------------------------------------------------------------

#[test]
fn a_stack_does_not_depend_on_itself() {
    let mut spec = stack(helm());
    spec.depends_on.insert("cert-manager".parse().unwrap());
    assert_eq!(stack_paths(&spec), Vec::<String>::new());
    spec.depends_on.insert(spec.name.clone());
    assert_eq!(stack_paths(&spec), ["depends_on"]);
}

#[test]
fn helm_sources() {
    let source = |s: &str| {
        stack(ExecutorSpec::Helm {
            source: s.into(),
            version: "1.0.0".into(),
            values: serde_json::Map::new(),
        })
    };
    let at_limit = format!("https://{}", "a".repeat(2040));
    for ok in [
        "oci://registry-1.docker.io/bitnamicharts/nginx",
        "https://charts.example.com/nginx-1.0.0.tgz",
        "http://x",
        "./charts/app",
        "../app",
        "/srv/charts/app",
        "bitnami/nginx",
        "prometheus-community/kube-prometheus-stack",
        "my_repo/chart.v2",
        &at_limit,
    ] {
        assert_eq!(stack_paths(&source(ok)), Vec::<String>::new(), "{ok}");
    }
    for bad in [
        "",
        "nginx",
        "a/b/c",
        "Bitnami/nginx",
        "bitnami/",
        "oci://",
        "ftp://x/y",
        "bitnami/ nginx",
        "https://example.com/a chart",
        ".hidden/chart",
        &format!("{at_limit}a"),
    ] {
        assert_eq!(stack_paths(&source(bad)), ["executor.source"], "{bad}");
    }
}

#[test]
fn helm_versions_and_values() {
    let version = |v: &str| {
        stack(ExecutorSpec::Helm {
            source: "bitnami/nginx".into(),
            version: v.into(),
            values: serde_json::Map::new(),
        })
    };
    for ok in [
        "4.13.0",
        "v1.2.3+build_7",
        "latest",
        "1.0.0-rc.1",
        &"9".repeat(64),
    ] {
        assert_eq!(stack_paths(&version(ok)), Vec::<String>::new(), "{ok}");
    }
    for bad in ["", "1.0 beta", "^1.0", "1.0/2", &"9".repeat(65)] {
        assert_eq!(stack_paths(&version(bad)), ["executor.version"], "{bad}");
    }

    let mut values = serde_json::Map::new();
    values.insert("blob".into(), json!("x".repeat(1024 * 1024)));
    let spec = stack(ExecutorSpec::Helm {
        source: "bitnami/nginx".into(),
        version: "".into(),
        values,
    });
    assert_eq!(stack_paths(&spec), ["executor.version", "executor.values"]);
}

#[test]
fn manifest_documents() {
    assert_eq!(
        stack_paths(&stack(manifests(vec![]))),
        ["executor.documents"]
    );
    let many = (0..500)
        .map(|i| config_map(&format!("c{i}")))
        .collect::<Vec<_>>();
    assert_eq!(
        stack_paths(&stack(manifests(many.clone()))),
        Vec::<String>::new()
    );
    let mut too_many = many;
    too_many.push(config_map("c500"));
    assert_eq!(
        stack_paths(&stack(manifests(too_many))),
        ["executor.documents"]
    );

    let documents = vec![
        config_map("fine"),
        json!("not an object"),
        json!({ "kind": "ConfigMap", "metadata": { "name": "x" } }),
        json!({ "apiVersion": "v1", "kind": 7, "metadata": { "name": "x" } }),
        json!({ "apiVersion": "v1", "kind": "ConfigMap" }),
        json!({ "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": "" } }),
        json!({ "apiVersion": "", "kind": "", "metadata": "x" }),
    ];
    assert_eq!(
        stack_paths(&stack(manifests(documents))),
        [
            "executor.documents[1]",
            "executor.documents[2].apiVersion",
            "executor.documents[3].kind",
            "executor.documents[4].metadata.name",
            "executor.documents[5].metadata.name",
            "executor.documents[6].apiVersion",
            "executor.documents[6].kind",
            "executor.documents[6].metadata.name",
        ]
    );

    let mut big = config_map("big");
    big["data"] = json!({ "blob": "x".repeat(1024 * 1024) });
    assert_eq!(
        stack_paths(&stack(manifests(vec![big]))),
        ["executor.documents"]
    );
}

#[test]
fn terraform_sources_and_variables() {
    let with_source = |s: &str| {
        stack(ExecutorSpec::Terraform {
            source: s.into(),
            variables: BTreeMap::new(),
        })
    };
    for ok in [
        "./modules/rds",
        "git::https://example.com/vpc.git?ref=v1.2.0",
        "terraform-aws-modules/vpc/aws",
        &"s".repeat(2048),
    ] {
        assert_eq!(stack_paths(&with_source(ok)), Vec::<String>::new(), "{ok}");
    }
    for bad in ["", &"s".repeat(2049)] {
        assert_eq!(stack_paths(&with_source(bad)), ["executor.source"]);
    }

    let names = [
        ("_x", true),
        ("region", true),
        ("node-count", true),
        ("Node_Count2", true),
        ("1x", false),
        ("a.b", false),
        ("", false),
        ("-a", false),
        ("a b", false),
    ];
    for (name, ok) in names {
        let spec = stack(terraform(BTreeMap::from([(name.to_owned(), json!(1))])));
        let expected = if ok {
            Vec::new()
        } else {
            vec![entry("executor.variables", name)]
        };
        assert_eq!(stack_paths(&spec), expected, "{name}");
    }
    let long = "v".repeat(65);
    let spec = stack(terraform(BTreeMap::from([(long.clone(), json!(1))])));
    assert_eq!(stack_paths(&spec), [entry("executor.variables", &long)]);

    let spec = stack(terraform(BTreeMap::from([(
        "blob".to_owned(),
        json!("x".repeat(1024 * 1024)),
    )])));
    assert_eq!(stack_paths(&spec), ["executor.variables"]);
}

#[test]
fn every_stack_problem_is_reported() {
    let mut spec = stack(terraform(BTreeMap::from([
        ("1st".to_owned(), json!(1)),
        ("ok".to_owned(), json!(2)),
        ("with.dot".to_owned(), json!(3)),
    ])));
    if let ExecutorSpec::Terraform { source, .. } = &mut spec.executor {
        source.clear();
    }
    spec.depends_on.insert(spec.name.clone());
    assert_eq!(
        stack_paths(&spec),
        [
            "executor.source",
            r#"executor.variables["1st"]"#,
            r#"executor.variables["with.dot"]"#,
            "depends_on",
        ]
    );
}

// ---- properties --------------------------------------------------------------------------

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        ".{0,8}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(".{0,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn arb_cloud() -> impl Strategy<Value = CloudTarget> {
    prop_oneof![
        (
            "[0-9]{12}",
            prop::option::of("[a-zA-Z0-9+=,.@_-]{1,10}(/[a-zA-Z0-9+=,.@_-]{1,10}){0,2}")
        )
            .prop_map(|(account, role)| CloudTarget::Aws {
                role_arn: role.map(|r| {
                    AwsRoleArn::new(format!("arn:aws:iam::{account}:role/{r}")).unwrap()
                }),
                account_id: AwsAccountId::new(account).unwrap(),
            }),
        "[a-z][a-z0-9-]{4,28}[a-z0-9]".prop_map(|p| CloudTarget::Gcp {
            project_id: GcpProjectId::new(p).unwrap()
        }),
        (
            "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}",
            "[A-Za-z0-9_().-]{0,89}[A-Za-z0-9_()-]"
        )
            .prop_map(|(s, rg)| CloudTarget::Azure {
                subscription_id: AzureSubscriptionId::new(s).unwrap(),
                resource_group: AzureResourceGroup::new(rg).unwrap(),
            }),
        Just(CloudTarget::Simulated),
    ]
}

fn arb_cidr() -> impl Strategy<Value = NetworkCidr> {
    (any::<u32>(), 16u8..=28).prop_map(|(bits, prefix)| {
        let mask = u32::MAX << (32 - u32::from(prefix));
        let addr = (0x0A00_0000 | (bits & 0x00FF_FFFF)) & mask;
        NetworkCidr::new(addr.into(), prefix).unwrap()
    })
}

fn arb_size() -> impl Strategy<Value = NodePoolSize> {
    (1u32..=NodePoolSize::MAX_NODES)
        .prop_flat_map(|max| (0..=max, Just(max)))
        .prop_flat_map(|(desired, max)| (0..=desired, Just(desired), Just(max)))
        .prop_map(|(min, desired, max)| NodePoolSize::new(min, desired, max).unwrap())
}

fn arb_pool() -> impl Strategy<Value = NodePoolSpec> {
    (
        "[a-z][a-z0-9-]{0,10}[a-z0-9]",
        "[a-zA-Z][a-zA-Z0-9._-]{0,20}",
        arb_size(),
        prop::collection::btree_map("[a-z./]{1,12}", ".{0,12}", 0..4),
    )
        .prop_map(|(name, instance_type, size, labels)| NodePoolSpec {
            name: name.parse().unwrap(),
            instance_type: instance_type.parse().unwrap(),
            size,
            labels,
        })
}

fn arb_workspace() -> impl Strategy<Value = WorkspaceSpec> {
    (
        "[a-z]([a-z0-9-]{0,20}[a-z0-9])?",
        arb_cloud(),
        "[a-z]{2}-[a-z]{2,8}-[1-9]",
        0u8..=99,
        (
            arb_cidr(),
            prop::option::of(arb_cidr()),
            prop::option::of(arb_cidr()),
            any::<bool>(),
        ),
        prop::collection::vec(arb_pool(), 0..4),
        prop::collection::btree_map(".{0,10}", ".{0,10}", 0..3),
        prop::collection::btree_map("[a-z._-]{1,10}", arb_json(), 0..3),
    )
        .prop_map(
            |(tenant, cloud, region, minor, network, node_pools, tags, parameters)| WorkspaceSpec {
                tenant: tenant.parse().unwrap(),
                cloud,
                region: region.parse().unwrap(),
                kubernetes_version: KubernetesVersion::new(minor).unwrap(),
                network: NetworkSpec {
                    cidr: network.0,
                    pod_cidr: network.1,
                    service_cidr: network.2,
                    private_endpoint: network.3,
                },
                node_pools,
                overrides: TemplateOverrides { tags, parameters },
            },
        )
}

fn arb_stack_name() -> impl Strategy<Value = StackName> {
    "[a-z]([a-z0-9-]{0,20}[a-z0-9])?".prop_map(|n| n.parse().unwrap())
}

fn arb_stack() -> impl Strategy<Value = StackSpec> {
    let executor = prop_oneof![
        (
            ".{0,20}",
            ".{0,10}",
            prop::collection::btree_map(".{0,6}", arb_json(), 0..3)
        )
            .prop_map(|(source, version, values)| ExecutorSpec::Helm {
                source,
                version,
                values: values.into_iter().collect(),
            }),
        prop::collection::vec(arb_json(), 0..4)
            .prop_map(|documents| ExecutorSpec::Manifests { documents }),
        (
            ".{0,20}",
            prop::collection::btree_map(".{0,6}", arb_json(), 0..3)
        )
            .prop_map(|(source, variables)| ExecutorSpec::Terraform { source, variables }),
    ];
    (
        arb_stack_name(),
        prop_oneof![
            Just(StackKind::InfraAddon),
            Just(StackKind::Observability),
            Just(StackKind::Application)
        ],
        executor,
        prop::collection::btree_set(arb_stack_name(), 0..4),
    )
        .prop_map(|(name, kind, executor, depends_on)| StackSpec {
            name,
            kind,
            executor,
            depends_on,
        })
}

proptest! {
    #[test]
    fn workspace_specs_round_trip(spec in arb_workspace()) {
        let text = serde_json::to_string(&spec).unwrap();
        let back: WorkspaceSpec = serde_json::from_str(&text).unwrap();
        prop_assert_eq!(&back, &spec);
        // Validation never changes the outcome of reading: it either passes, or
        // from_json reports exactly its problems.
        match spec.validate() {
            Ok(()) => prop_assert_eq!(WorkspaceSpec::from_json(&text), Ok(spec)),
            Err(e) => prop_assert_eq!(WorkspaceSpec::from_json(&text), Err(e)),
        }
    }

    #[test]
    fn stack_specs_round_trip(spec in arb_stack()) {
        let text = serde_json::to_string(&spec).unwrap();
        let back: StackSpec = serde_json::from_str(&text).unwrap();
        prop_assert_eq!(&back, &spec);
        match spec.validate() {
            Ok(()) => prop_assert_eq!(StackSpec::from_json(&text), Ok(spec)),
            Err(e) => prop_assert_eq!(StackSpec::from_json(&text), Err(e)),
        }
    }

    #[test]
    fn reading_arbitrary_text_never_panics(text in ".{0,64}") {
        let _ = WorkspaceSpec::from_json(&text);
        let _ = StackSpec::from_json(&text);
    }

    #[test]
    fn a_broken_tenant_is_reported_at_its_path(tenant in ".{0,70}") {
        prop_assume!(TenantId::new(tenant.as_str()).is_err());
        let mut doc = serde_json::to_value(simulated()).unwrap();
        doc["tenant"] = json!(tenant);
        let errors = WorkspaceSpec::from_json(&doc.to_string()).unwrap_err();
        prop_assert_eq!(errors.problems.len(), 1);
        prop_assert_eq!(errors.problems[0].path.as_str(), "tenant");
    }
}
