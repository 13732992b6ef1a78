//! The planner and the executor together on in-memory engines: snapshot →
//! plan → execute → snapshot again, as `up` and `down` do, with no daemon.

use std::path::Path;

use crate::engine::memory::MemoryEngine;
use crate::engine::Engine;
use crate::pipeline::events::Reporter;
use crate::pipeline::execute::host_steps;
use crate::plan::desired::{desired_state, Secrets};
use crate::plan::reconcile::Step;
use crate::plan::{HostSnapshot, Plan, Snapshot, Wait};
use crate::spec::HostState;
use crate::topology::{self, Topology};

const AGENT_ID: &str = "sha256:agent-1";

fn topology(extra: &str) -> Topology {
    topology::parse(
        &format!(
            "name: qa\nlab: {{ subnet: 10.77.0.0/24 }}\nhosts:\n  host-1: {{ driver: local, address: 10.77.0.11, roles: [app] }}\n  host-2: {{ driver: local, address: 10.77.0.12, roles: [app, lb] }}\nconsul: {{ servers: [host-2] }}\n{extra}"
        ),
        Path::new("t.yaml"),
    )
    .unwrap()
}

fn desired(t: &Topology) -> Vec<HostState> {
    desired_state(
        t,
        &Secrets {
            gossip_key: "a2V5".into(),
            ..Default::default()
        },
    )
}

/// The local engine with every image of `t`; hosts with none.
struct World {
    local: MemoryEngine,
    hosts: Vec<MemoryEngine>,
}

impl World {
    fn new(t: &Topology) -> World {
        let local = MemoryEngine::new("local");
        for image in desired(t).iter().flat_map(HostState::images) {
            let id = if image.contains("agent") {
                AGENT_ID.to_string()
            } else {
                format!("sha256:{image}")
            };
            local.add_image(&image, &id);
        }
        World {
            local,
            hosts: t.hosts.iter().map(|h| MemoryEngine::new(&h.name)).collect(),
        }
    }

    async fn snapshot(&self, t: &Topology) -> Snapshot {
        let images: Vec<String> = desired(t).iter().flat_map(HostState::images).collect();
        let mut hosts = Vec::new();
        for h in &self.hosts {
            hosts.push(HostSnapshot {
                host: h.name().to_string(),
                observed: Some(h.observe(&t.name, &images).await.unwrap()),
                ..Default::default()
            });
        }
        Snapshot {
            hosts,
            local_images: self.local.image_ids(&images).await.unwrap(),
            ..Default::default()
        }
    }

    async fn plan(&self, t: &Topology) -> Plan {
        Plan::up(t, &desired(t), &self.snapshot(t).await).unwrap()
    }

    /// Carry out the hosts' steps and the rolling ones' container part, as
    /// `up` does (without Consul, which the in-memory engine does not run).
    async fn execute(&self, plan: &Plan) {
        let line = Reporter::quiet().host("test");
        for (p, engine) in plan.hosts().iter().zip(&self.hosts) {
            assert_eq!(p.host, engine.name());
            host_steps(engine, Some(&self.local), &p.steps, "qa", &line, "host")
                .await
                .unwrap();
        }
        for (host, step) in plan.rolling() {
            let engine = self.hosts.iter().find(|e| e.name() == host).unwrap();
            host_steps(
                engine,
                Some(&self.local),
                std::slice::from_ref(step),
                "qa",
                &line,
                "rolling",
            )
            .await
            .unwrap();
        }
    }

    /// The stages too, as `up` does them (the waits aside): the one-off,
    /// the creations, the replacements; stops at the first failure.
    async fn execute_stages(&self, plan: &Plan) -> anyhow::Result<()> {
        let line = Reporter::quiet().host("test");
        let engine = |host: &str| self.hosts.iter().find(|e| e.name() == host).unwrap();
        for stage in &plan.stages() {
            if let Some((host, step)) = &stage.before_rollout {
                host_steps(
                    engine(host),
                    None,
                    std::slice::from_ref(step),
                    "qa",
                    &line,
                    "stage",
                )
                .await?;
            }
            for p in &stage.hosts {
                host_steps(
                    engine(&p.host),
                    Some(&self.local),
                    &p.steps,
                    "qa",
                    &line,
                    "stage",
                )
                .await?;
            }
            for (host, step) in &stage.rolling {
                host_steps(
                    engine(host),
                    None,
                    std::slice::from_ref(step),
                    "qa",
                    &line,
                    "stage",
                )
                .await?;
            }
        }
        Ok(())
    }

    /// The membership changes' steps too, in order.
    async fn execute_members(&self, plan: &Plan) {
        let line = Reporter::quiet().host("test");
        for change in plan.members() {
            let engine = self.hosts.iter().find(|e| e.name() == change.host).unwrap();
            host_steps(engine, None, &change.steps, "qa", &line, "members")
                .await
                .unwrap();
        }
    }

    async fn converge(&self, t: &Topology) -> Plan {
        let plan = self.plan(t).await;
        self.execute(&plan).await;
        plan
    }
}

fn actions(plan: &Plan) -> Vec<String> {
    plan.steps()
        .iter()
        .map(|s| format!("{} {} {}", s.host, s.action, s.subject))
        .collect()
}

const SERVICE: &str = "services:\n  web:\n    image: web:1\n    port: 80\n";

#[tokio::test]
async fn from_empty_everything_is_made_then_nothing_is_left_to_do() {
    let t = topology(SERVICE);
    let world = World::new(&t);
    let first = world.converge(&t).await;
    let steps = actions(&first);
    assert!(
        steps.contains(&"host-1 deliver_images images".to_string()),
        "{steps:#?}"
    );
    assert!(
        steps.contains(&"host-2 create qa-nginx".to_string()),
        "{steps:#?}"
    );
    assert!(
        steps.contains(&"host-1 create qa-web-1".to_string()),
        "{steps:#?}"
    );
    let again = world.plan(&t).await;
    assert!(again.is_noop(), "{:#?}", actions(&again));
    // Images first, volumes before the containers that mount them.
    let journal = world.hosts[0].journal();
    assert!(journal[0].starts_with("receive images"), "{journal:#?}");
    let volume = journal
        .iter()
        .position(|j| j == "create volume qa-consul-data");
    let consul = journal.iter().position(|j| j == "create qa-consul");
    assert!(volume < consul, "{journal:#?}");
}

fn phase_names(plan: &Plan) -> Vec<&'static str> {
    plan.phases.iter().map(crate::plan::Phase::name).collect()
}

#[tokio::test]
async fn the_plan_is_one_list_of_phases_and_a_converged_one_only_checks() {
    let t = topology(SERVICE);
    let world = World::new(&t);
    let first = world.converge(&t).await;
    assert_eq!(
        phase_names(&first),
        ["lab", "hosts", "cluster", "members", "rolling", "routes", "edge"]
    );
    // The flat steps are the phases' steps, in the phases' order.
    let flat: Vec<_> = first
        .phases
        .iter()
        .flat_map(crate::plan::Phase::steps)
        .collect();
    assert_eq!(flat, first.steps());
    let phases_in_steps: Vec<&str> = first.steps().iter().map(|s| s.phase).collect();
    let cluster = phases_in_steps
        .iter()
        .position(|p| *p == "cluster")
        .unwrap();
    assert!(
        phases_in_steps[..cluster].iter().all(|p| *p == "host"),
        "{phases_in_steps:?}"
    );
    assert_eq!(phases_in_steps.last(), Some(&"routes"));
    assert!(first.totals().create > 0, "{}", first.totals());

    let again = world.plan(&t).await;
    assert!(again.is_noop(), "{:#?}", actions(&again));
    assert_eq!(
        phase_names(&again),
        ["lab", "hosts", "cluster and routes", "edge"]
    );
    let steps: Vec<&str> = again.steps().iter().map(|s| s.action).collect();
    assert_eq!(steps, ["wait_cluster", "wait_routes"]);
    assert_eq!(again.totals().create, 0);
    let text = crate::plan::print::text(&t, &again);
    assert!(text.contains("host-1"), "{text}");
}

#[tokio::test]
async fn half_done_is_finished_and_nothing_made_twice() {
    let t = topology(SERVICE);
    let world = World::new(&t);
    let plan = world.plan(&t).await;
    // Interrupted: host-1 got its images and its first two steps only, and
    // a container created but never started.
    let partial = &plan.hosts()[0].steps[..3];
    let line = Reporter::quiet().host("test");
    host_steps(
        &world.hosts[0],
        Some(&world.local),
        partial,
        "qa",
        &line,
        "host",
    )
    .await
    .unwrap();
    let Step::Create { spec, .. } = &plan.hosts()[0].steps[3] else {
        panic!("{:?}", plan.hosts()[0].steps[3]);
    };
    world.hosts[0].create_only("qa", spec);

    let rest = world.converge(&t).await;
    let steps = actions(&rest);
    assert!(
        !steps.iter().any(|s| s.starts_with("host-1 deliver_images")),
        "images already there are not sent again: {steps:#?}"
    );
    assert!(
        steps.contains(&format!("host-1 replace {}", spec.name)),
        "the never-started container is replaced: {steps:#?}"
    );
    assert!(world.plan(&t).await.is_noop());
    assert_eq!(
        world.hosts[0].containers().len(),
        desired(&t)[0].containers.len()
    );
}

#[tokio::test]
async fn stopped_is_started_changed_is_replaced_dropped_is_removed() {
    let t = topology(SERVICE);
    let world = World::new(&t);
    world.converge(&t).await;

    world.hosts[0].stop("qa-register");
    let plan = world.converge(&t).await;
    assert_eq!(
        actions(&plan)
            .into_iter()
            .filter(|s| !s.contains("wait_"))
            .collect::<Vec<_>>(),
        vec!["host-1 start qa-register"]
    );

    // A rebuilt agent image: delivered, and every agent made from it
    // replaced; app instances roll, the rest goes at once.
    world
        .local
        .add_image("stagectl/agent:latest", "sha256:agent-2");
    let plan = world.converge(&t).await;
    let steps = actions(&plan);
    assert!(
        steps.contains(&"host-1 deliver_images images".to_string()),
        "{steps:#?}"
    );
    assert!(
        steps.contains(&"host-1 replace qa-register".to_string()),
        "{steps:#?}"
    );
    assert!(world.plan(&t).await.is_noop());

    // The service changes: its instances are replaced one host at a time,
    // in topology order, after everything else.
    let changed = topology(&format!("{SERVICE}    env:\n      GREETING: hi\n"));
    let plan = world.plan(&changed).await;
    let rolling: Vec<&str> = plan.rolling().iter().map(|(h, _)| h.as_str()).collect();
    assert_eq!(rolling, vec!["host-1", "host-2"]);
    assert!(plan.hosts().iter().all(|h| h.steps.is_empty()));
    world.execute(&plan).await;
    assert!(world.plan(&changed).await.is_noop());

    // The service leaves the topology: its instances go.
    let without = topology("");
    let plan = world.converge(&without).await;
    let removed: Vec<String> = actions(&plan)
        .into_iter()
        .filter(|s| s.contains(" remove "))
        .collect();
    assert_eq!(
        removed,
        vec!["host-1 remove qa-web-1", "host-2 remove qa-web-1"]
    );
    assert!(world.plan(&without).await.is_noop());
}

#[tokio::test]
async fn down_removes_what_up_made_and_only_that() {
    let t = topology(SERVICE);
    let world = World::new(&t);
    world.converge(&t).await;
    // Another environment on the same host stays.
    let other = topology("");
    let other = Topology {
        name: "other".into(),
        ..other
    };
    let other_state = desired(&other);
    world.hosts[0]
        .create_and_start(&other_state[0].containers[0])
        .await
        .unwrap();

    let snapshot = world.snapshot(&t).await;
    let plan = Plan::down(&t, &snapshot, crate::plan::reconcile::Keep::Nothing);
    world.execute(&plan).await;
    let left: Vec<String> = world.hosts[0]
        .containers()
        .iter()
        .map(|c| c.spec.name.clone())
        .collect();
    assert_eq!(left, vec![other_state[0].containers[0].name.clone()]);
    assert!(world.hosts[1].containers().is_empty());
    assert!(world.hosts[1].volumes().is_empty());
}

#[tokio::test]
async fn an_image_nobody_has_stops_the_plan_before_any_change() {
    let t = topology("services:\n  web:\n    image: web:2\n    port: 80\n");
    let world = World::new(&t);
    world.local.remove_image("web:2");
    let err = Plan::up(&t, &desired(&t), &world.snapshot(&t).await).unwrap_err();
    assert!(err.contains("web:2 is neither on host-1"), "{err}");
    assert!(world.hosts.iter().all(|h| h.journal().is_empty()));
}

/// Three hosts, `servers` among them.
fn three_hosts(servers: &str) -> Topology {
    three_hosts_named("host-3", servers)
}

/// `three_hosts` with the third host (10.77.0.13) named `third`.
fn three_hosts_named(third: &str, servers: &str) -> Topology {
    topology::parse(
        &format!(
            "name: qa\nlab: {{ subnet: 10.77.0.0/24 }}\nhosts:\n  host-1: {{ driver: local, address: 10.77.0.11, roles: [app] }}\n  host-2: {{ driver: local, address: 10.77.0.12, roles: [app, lb] }}\n  {third}: {{ driver: local, address: 10.77.0.13, roles: [app] }}\nconsul: {{ servers: [{servers}] }}\n"
        ),
        Path::new("t.yaml"),
    )
    .unwrap()
}

fn member_steps(plan: &Plan) -> Vec<String> {
    plan.members()
        .iter()
        .flat_map(|c| {
            c.steps
                .iter()
                .map(|s| format!("{} {} {}", c.host, s.action(), s.subject()))
                .chain([format!("wait {} (asked {})", c.expect.describe(), c.asked)])
        })
        .collect()
}

#[tokio::test]
async fn servers_are_added_then_removed_one_at_a_time_and_no_other_agent_is_touched() {
    let one = three_hosts("host-2");
    let world = World::new(&one);
    world.converge(&one).await;

    let three = three_hosts("host-1, host-2, host-3");
    let grow = world.plan(&three).await;
    assert_eq!(
        member_steps(&grow),
        vec![
            "host-1 replace qa-consul",
            "wait host-1 a voting server (asked host-2)",
            "host-3 replace qa-consul",
            "wait host-3 a voting server (asked host-2)",
        ]
    );
    assert!(
        grow.hosts().iter().all(|h| h.is_noop()),
        "the agents are replaced in the membership phase only: {:#?}",
        actions(&grow)
    );
    world.execute(&grow).await;
    world.execute_members(&grow).await;
    assert!(world.plan(&three).await.is_noop());

    let shrink = world.plan(&one).await;
    assert_eq!(
        member_steps(&shrink),
        vec![
            "host-1 leave qa-consul",
            "host-1 replace qa-consul",
            "wait host-1 a client (asked host-2)",
            "host-3 leave qa-consul",
            "host-3 replace qa-consul",
            "wait host-3 a client (asked host-2)",
        ]
    );
    world.execute_members(&shrink).await;
    assert!(world.plan(&one).await.is_noop());
    // The leave is asked of the agent, after the engine was told not to
    // restart it.
    let journal = world.hosts[0].journal();
    let no_restart = journal.iter().position(|j| j == "no-restart qa-consul");
    assert!(no_restart.is_some(), "{journal:#?}");
}

#[tokio::test]
async fn a_server_set_that_keeps_none_of_the_running_servers_is_refused() {
    let world = World::new(&three_hosts("host-2"));
    world.converge(&three_hosts("host-2")).await;
    let elsewhere = three_hosts("host-1");
    let refused = Plan::up(
        &elsewhere,
        &desired(&elsewhere),
        &world.snapshot(&elsewhere).await,
    )
    .expect_err("no running server stays one");
    assert!(refused.contains("(host-2)"), "{refused}");
    assert!(refused.contains("second cluster"), "{refused}");
}

#[tokio::test]
async fn an_agent_that_does_not_run_is_replaced_with_its_host_not_in_the_membership_phase() {
    let one = three_hosts("host-2");
    let world = World::new(&one);
    world.converge(&one).await;
    world.hosts[0].stop("qa-consul");
    let three = three_hosts("host-1, host-2, host-3");
    let plan = world.plan(&three).await;
    assert!(
        actions(&plan).contains(&"host-1 replace qa-consul".to_string())
            && plan.hosts()[0]
                .steps
                .iter()
                .any(|s| s.subject() == "qa-consul"),
        "{:#?}",
        actions(&plan)
    );
    assert_eq!(
        member_steps(&plan),
        vec![
            "host-3 replace qa-consul",
            "wait host-3 a voting server (asked host-2)"
        ]
    );
}

#[tokio::test]
async fn a_new_environment_makes_its_agents_with_the_hosts_not_one_at_a_time() {
    let t = three_hosts("host-1, host-2, host-3");
    let world = World::new(&t);
    let plan = world.plan(&t).await;
    assert!(plan.members().is_empty(), "{:#?}", member_steps(&plan));
}

/// `three_hosts(servers)` converged, then planned with host-3 renamed
/// web-3 (the same engine, now under the topology's new name, with
/// `renamed_servers`): the world, the unrenamed topology and the plan.
async fn plan_after_renaming_host_3(
    servers: &str,
    renamed_servers: &str,
) -> (World, Topology, Plan) {
    let three = three_hosts(servers);
    let world = World::new(&three);
    world.converge(&three).await;
    let renamed = three_hosts_named("web-3", renamed_servers);
    let mut snapshot = world.snapshot(&three).await;
    snapshot.hosts[2].host = "web-3".into();
    let plan = Plan::up(&renamed, &desired(&renamed), &snapshot).unwrap();
    (world, three, plan)
}

#[tokio::test]
async fn a_renamed_server_leaves_under_its_old_name_and_is_waited_for_under_the_new_one() {
    let (world, three, plan) =
        plan_after_renaming_host_3("host-1, host-2, host-3", "host-1, host-2, web-3").await;
    assert_eq!(
        member_steps(&plan),
        vec![
            "web-3 leave qa-consul",
            "web-3 replace qa-consul",
            "wait web-3 a voting server (asked host-1)",
            "host-1 force_leave host-3",
            "wait host-3 out of the member list (asked host-1)"
        ]
    );
    // A node ID of its own for the new name; the other servers keep the
    // raft configuration, so none is recovered.
    let Step::Leave {
        cause,
        rejoin: Some(rejoin),
        ..
    } = &plan.members()[0].steps[0]
    else {
        panic!("{:#?}", plan.members()[0].steps)
    };
    assert!(cause.contains("renamed from host-3"), "{cause}");
    assert_eq!(rejoin.node_id, crate::plan::members::node_id("qa", "web-3"));
    assert_ne!(
        rejoin.node_id,
        crate::plan::members::node_id("qa", "host-3")
    );
    assert_eq!(rejoin.sole_server, None);
    assert!(matches!(
        &plan.members()[1].steps[0],
        Step::ForceLeave { prune: true, node, .. } if node == "host-3"
    ));
    // The cluster is waited for before the change without the new name,
    // which only its change makes a member.
    assert!(
        matches!(&plan.cluster(), Some(Wait::Cluster { members, .. }) if *members == ["host-1", "host-2"]),
        "{:?}",
        plan.cluster()
    );

    // Unrenamed, the same hosts wait for all three and leave nobody.
    let plan = world.plan(&three).await;
    assert!(plan.members().is_empty(), "{:#?}", member_steps(&plan));
    assert!(
        matches!(&plan.cluster(), Some(Wait::Cluster { members, .. }) if members.len() == 3),
        "{:?}",
        plan.cluster()
    );
}

#[tokio::test]
async fn a_renamed_sole_server_recovers_its_raft_configuration_to_its_new_node_id() {
    let (_, _, plan) = plan_after_renaming_host_3("host-3", "web-3").await;
    assert!(
        matches!(
            &plan.members()[0].steps[0],
            Step::Leave { rejoin: Some(r), .. } if r.sole_server.as_deref() == Some("10.77.0.13:8300")
        ),
        "{:#?}",
        plan.members()
    );
    // Asked of itself: no other server is left to ask.
    assert_eq!(plan.members()[1].asked, "web-3");
}

#[tokio::test]
async fn a_host_out_of_the_topology_leaves_and_is_cleared_or_marked_left_when_unreachable() {
    let three = three_hosts("host-2");
    let world = World::new(&three);
    world.converge(&three).await;
    let two = topology::parse(
        "name: qa\nlab: { subnet: 10.77.0.0/24 }\nhosts:\n  host-1: { driver: local, address: 10.77.0.11, roles: [app] }\n  host-2: { driver: local, address: 10.77.0.12, roles: [app, lb] }\nconsul: { servers: [host-2] }\n",
        Path::new("t.yaml"),
    )
    .unwrap();
    let mut snapshot = Snapshot {
        hosts: world.snapshot(&three).await.hosts[..2].to_vec(),
        ..Default::default()
    };
    snapshot.departed = vec![HostSnapshot {
        host: "host-3".into(),
        observed: Some(world.hosts[2].observe("qa", &[]).await.unwrap()),
        ..Default::default()
    }];
    let plan = Plan::up(&two, &desired(&two), &snapshot).unwrap();
    let steps = member_steps(&plan);
    assert_eq!(steps[0], "host-3 leave qa-consul", "{steps:#?}");
    assert_eq!(steps[1], "host-3 remove qa-register", "{steps:#?}");
    assert_eq!(steps[2], "host-3 remove qa-consul", "{steps:#?}");
    assert_eq!(
        steps[3], "host-3 remove_volume qa-consul-data",
        "{steps:#?}"
    );
    assert_eq!(steps[4], "wait host-3 left (asked host-2)", "{steps:#?}");

    snapshot.departed[0].observed = None;
    snapshot.departed[0].unreachable = true;
    let plan = Plan::up(&two, &desired(&two), &snapshot).unwrap();
    assert_eq!(
        member_steps(&plan),
        vec![
            "host-2 force_leave host-3",
            "wait host-3 not a failed member (asked host-2)"
        ]
    );
}

const STACK: &str = "services:\n  db: { image: db:1, port: 6379, hosts: [host-1], expose: tcp }\n  web: { image: WEB, port: 80, depends_on: [db], before_rollout: [MIGRATE] }\n  worker: { image: web:1, port: 80, expose: none, depends_on: [db] }\n";

fn stack(web: &str, migrate: &str) -> Topology {
    topology(&STACK.replace("WEB", web).replace("MIGRATE", migrate))
}

#[tokio::test]
async fn dependents_start_after_their_dependencies_and_a_migration() {
    let t = stack("web:1", "migrate");
    let world = World::new(&t);
    let plan = world.plan(&t).await;
    let steps = actions(&plan);
    let at = |s: &str| {
        steps
            .iter()
            .position(|x| x == s)
            .unwrap_or_else(|| panic!("no {s} in {steps:#?}"))
    };
    // db with everything else; web and worker in stages, by name, each
    // after db passes; web's migration before its instances.
    assert!(at("host-1 create qa-db-1") < at("host-2 wait_cluster 2 members"));
    assert!(at("host-2 wait_cluster 2 members") < at("host-2 wait_passing db passing"));
    assert!(at("host-2 wait_passing db passing") < at("host-1 run_once qa-web-before-rollout"));
    assert!(at("host-1 run_once qa-web-before-rollout") < at("host-1 create qa-web-1"));
    assert!(at("host-2 create qa-web-1") < at("host-1 create qa-worker-1"));
    let names: Vec<&str> = plan.stages().iter().map(|s| s.service.as_str()).collect();
    assert_eq!(names, ["web", "worker"]);
    assert!(plan.stages()[1].before_rollout.is_none());
    world.execute(&plan).await;
    world.execute_stages(&plan).await.unwrap();
    // Converged: no stage, no wait, nothing to run.
    let again = world.plan(&t).await;
    assert!(again.is_noop(), "{:#?}", actions(&again));
}

#[tokio::test]
async fn a_failed_migration_leaves_the_old_instances_in_place() {
    let t = stack("web:1", "migrate");
    let world = World::new(&t);
    let plan = world.converge(&t).await;
    world.execute_stages(&plan).await.unwrap();
    let before = container_ids(&world, "qa-web-1").await;
    assert_eq!(before.len(), 2);

    // A new image whose migration fails: nothing of web is replaced.
    let failing = stack("web:2", "false");
    world.local.add_image("web:2", "sha256:web:2");
    let plan = world.plan(&failing).await;
    assert_eq!(plan.stages()[0].service, "web");
    assert_eq!(plan.stages()[0].rolling.len(), 2, "{:#?}", actions(&plan));
    world.execute(&plan).await;
    let err = world.execute_stages(&plan).await.unwrap_err();
    assert!(
        format!("{err:#}").contains("before_rollout of web exited with 1"),
        "{err:#}"
    );
    assert_eq!(container_ids(&world, "qa-web-1").await, before);

    // Fixed: migrated, then replaced.
    let fixed = stack("web:2", "migrate");
    let plan = world.plan(&fixed).await;
    world.execute(&plan).await;
    world.execute_stages(&plan).await.unwrap();
    let after = container_ids(&world, "qa-web-1").await;
    assert_eq!(after.len(), 2);
    assert!(after.iter().all(|id| !before.contains(id)));
}

/// The IDs of the containers named `name` on every host.
async fn container_ids(w: &World, name: &str) -> Vec<String> {
    let mut ids = Vec::new();
    for h in &w.hosts {
        let o = h.observe("qa", &[]).await.unwrap();
        ids.extend(
            o.containers
                .into_iter()
                .filter(|c| c.name == name)
                .map(|c| c.id),
        );
    }
    ids
}
