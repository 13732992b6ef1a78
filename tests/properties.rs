//! Property tests: the topology parser and the nginx renderer never panic,
//! whatever they are given, and keep their promises on valid input.
//! Bounded: a fixed number of cases per property (PROPTEST_CASES overrides).

use std::collections::BTreeMap;
use std::path::Path;

use proptest::prelude::*;
use stagectl::agent::render::{render, RenderContext, BUILTIN_TEMPLATE};
use stagectl::agent::routes::RouteTable;
use stagectl::cluster::http::Instance;

/// Lines that are each plausible in a topology, to splice into documents.
const FRAGMENTS: &[&str] = &[
    "name: demo",
    "hosts:",
    "  host-1: { address: ssh://10.0.0.1, roles: [lb] }",
    "  host-2: { driver: local, address: 10.77.0.12, roles: [app] }",
    "lab: { subnet: 10.77.0.0/24 }",
    "consul: { servers: [host-1] }",
    "ports: { lb_http: 70000 }",
    "services:",
    "  web: { image: web:1, port: 80, hosts: [host-2] }",
    "  a: &a [1, 2, 3]",
    "  b: [*a, *a, *a]",
    "- item",
    "key: 'unterminated",
    "\t tab: indented",
    "? complex",
    "!!binary AAAA",
    "{ flow: [ nested, { deep: [ ] } ] }",
    "...",
    "---",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Arbitrary text: an error or a topology, never a panic.
    #[test]
    fn parsing_arbitrary_text_never_panics(text in "\\PC{0,400}") {
        let _ = stagectl::topology::parse(&text, Path::new("fuzz.yaml"));
    }

    /// Documents spliced from plausible lines: same, and every error names
    /// the file.
    #[test]
    fn parsing_spliced_documents_never_panics(lines in prop::collection::vec(prop::sample::select(FRAGMENTS), 0..16)) {
        let text = lines.join("\n");
        if let Err(e) = stagectl::topology::parse(&text, Path::new("fuzz.yaml")) {
            let msg = format!("{e:#}");
            prop_assert!(msg.contains("fuzz.yaml"), "{}", msg);
        }
    }

    /// Any set of services and instances renders with the built-in
    /// template, braces balance, and every safe instance appears.
    #[test]
    fn the_builtin_template_always_renders_a_balanced_config(
        services in prop::collection::btree_map(
            "[a-z][a-z0-9-]{0,12}",
            prop::collection::vec((any::<[u8; 4]>(), 1u16..65535, "[a-z0-9:-]{1,20}"), 0..5),
            0..6,
        ),
    ) {
        let services: BTreeMap<String, Vec<Instance>> = services
            .into_iter()
            .map(|(name, list)| {
                let instances = list
                    .into_iter()
                    .map(|(ip, port, id)| Instance {
                        id,
                        node: "n".into(),
                        address: std::net::Ipv4Addr::from(ip).to_string(),
                        port,
                        ..Default::default()
                    })
                    .collect();
                (name, instances)
            })
            .collect();
        let table = RouteTable::build("env", "stagectl.test", &services);
        let ctx = RenderContext::new("env", "stagectl.test", 80, &table.services);
        let text = render(BUILTIN_TEMPLATE, &ctx).unwrap();
        prop_assert_eq!(text.matches('{').count(), text.matches('}').count());
        for view in &ctx.services {
            for i in &view.instances {
                let server_line = format!("server {}:{}", i.address, i.port);
                prop_assert!(text.contains(&server_line));
            }
        }
    }

    /// Arbitrary user templates: an error or text, never a panic or a hang.
    #[test]
    fn arbitrary_templates_never_panic(template in "\\PC{0,200}") {
        let ctx = RenderContext::new("env", "d", 80, []);
        let _ = render(&template, &ctx);
    }
}
