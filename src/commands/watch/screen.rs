//! The watch screen: the facts of a [`View`] laid out as tables.

use comfy_table::{presets::NOTHING, Table};

use super::View;
use crate::commands::status::clock;

pub(super) fn screen(
    view: &View,
    expected: &std::collections::BTreeMap<String, usize>,
    via: &str,
) -> String {
    let mut s = format!(
        "{}  watching Consul on {via}; q quits    {}\n\n",
        view.environment,
        clock(now())
    );
    if let Some(why) = &view.consul_error {
        s.push_str(&format!(
            "CONSUL DOES NOT ANSWER ({}); below: its last answer\n\n",
            crate::commands::printable(why)
        ));
    }
    let nodes: Vec<String> = view
        .cluster
        .nodes
        .iter()
        .map(|n| {
            let state = if n.status == "passing" {
                "alive"
            } else {
                "FAILED"
            };
            format!("{} {state}", crate::commands::printable(&n.node))
        })
        .collect();
    s.push_str(&format!("NODES  {}\n\n", nodes.join("   ")));
    let mut t = Table::new();
    t.load_style(NOTHING);
    t.set_header(vec!["SERVICE", "INSTANCES", "HEALTHY"]);
    for (name, instances) in &view.cluster.services {
        let passing = instances.iter().filter(|i| i.status == "passing").count();
        let list: Vec<String> = instances
            .iter()
            .map(crate::commands::status::instance_cell)
            .collect();
        let want = expected
            .get(name)
            .map(|w| format!(" (want {w})"))
            .unwrap_or_default();
        t.add_row(vec![
            crate::commands::printable(name),
            list.join("  "),
            format!("{passing}/{}{want}", instances.len()),
        ]);
    }
    s.push_str(&format!("{t}\n\n"));
    match &view.lb {
        None => s.push_str("LB  no status yet\n"),
        Some(lb) => {
            let last = match (lb.last_reload_at, lb.last_reload_ok) {
                (Some(at), Some(true)) => format!("last {} ok", clock(at)),
                (Some(at), Some(false)) => format!(
                    "last {} REJECTED: {}",
                    clock(at),
                    lb.last_error.as_deref().unwrap_or("")
                ),
                _ => "none yet".into(),
            };
            s.push_str(&format!(
                "LB  {} routes, {} reloads, {last}\n",
                lb.routes.len(),
                lb.reloads
            ));
            for e in &lb.excluded {
                s.push_str(&format!("  left out: {e}\n"));
            }
        }
    }
    s
}

pub(super) use crate::clock::unix_now as now;
