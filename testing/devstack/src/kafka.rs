//! The devstack's Kafka broker: a real Apache Kafka broker (`streamscan_test_servers::real::Kafka`, the `real`
//! backend), or librdkafka's mock cluster (the `sim` backend), hosted on a thread of its own (its
//! handle cannot move between threads), controlled through a channel, with Kafka's producer
//! fencing added in front of it (`streamscan_kafka_fence`), so that a zombie worker is fenced there too.

use std::sync::mpsc;
use std::thread::JoinHandle;

use rdkafka::mocking::MockCluster;

use crate::DevstackError;
use streamscan_kafka_fence::FencingProxy;

enum Command {
    BrokersDown(mpsc::Sender<Result<(), String>>),
    BrokersUp(mpsc::Sender<Result<(), String>>),
    Stop,
}

/// The hosted mock cluster.
pub struct KafkaHost {
    /// Where clients connect (the fencing proxy once [`KafkaHost::with_fencing`] ran).
    pub bootstrap: String,
    /// The broker's own address.
    pub broker: String,
    pub brokers: i32,
    fence: Option<FencingProxy>,
    broker_kind: Broker,
}

enum Broker {
    Mock {
        commands: mpsc::Sender<Command>,
        thread: Option<JoinHandle<()>>,
    },
    Real(streamscan_test_servers::real::Kafka),
}

impl KafkaHost {
    /// Starts `brokers` mock brokers with `topic` created with `partitions` partitions.
    pub fn start(brokers: i32, topic: &str, partitions: i32) -> Result<Self, DevstackError> {
        let (ready_tx, ready_rx) = mpsc::channel::<Result<String, String>>();
        let (commands, rx) = mpsc::channel::<Command>();
        let topic = topic.to_owned();
        let thread = std::thread::Builder::new()
            .name("kafka-mock".into())
            .spawn(move || {
                let cluster = match MockCluster::new(brokers) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("cannot start the mock cluster: {e}")));
                        return;
                    }
                };
                if let Err(e) = cluster.create_topic(&topic, partitions, brokers.min(3)) {
                    let _ = ready_tx.send(Err(format!("cannot create topic {topic}: {e}")));
                    return;
                }
                let _ = ready_tx.send(Ok(cluster.bootstrap_servers()));
                let all = |up: bool| -> Result<(), String> {
                    for id in 1..=brokers {
                        let r = if up {
                            cluster.broker_up(id)
                        } else {
                            cluster.broker_down(id)
                        };
                        r.map_err(|e| format!("broker {id}: {e}"))?;
                    }
                    Ok(())
                };
                while let Ok(cmd) = rx.recv() {
                    match cmd {
                        Command::BrokersDown(reply) => {
                            let _ = reply.send(all(false));
                        }
                        Command::BrokersUp(reply) => {
                            let _ = reply.send(all(true));
                        }
                        Command::Stop => break,
                    }
                }
            })
            .map_err(|source| DevstackError::Io {
                what: "starting the Kafka thread".into(),
                source,
            })?;
        let bootstrap = ready_rx
            .recv()
            .map_err(|_| DevstackError::Kafka("the Kafka thread stopped while starting".into()))?
            .map_err(DevstackError::Kafka)?;
        Ok(KafkaHost {
            broker: bootstrap.clone(),
            bootstrap,
            brokers,
            fence: None,
            broker_kind: Broker::Mock {
                commands,
                thread: Some(thread),
            },
        })
    }

    /// Starts a real Apache Kafka broker (one KRaft node) with `topic` created.
    pub async fn start_real(topic: &str, partitions: i32) -> Result<Self, DevstackError> {
        let kafka = tokio::task::spawn_blocking(streamscan_test_servers::real::Kafka::start)
            .await
            .map_err(|e| DevstackError::Kafka(e.to_string()))?
            .map_err(|e| DevstackError::Kafka(e.to_string()))?;
        kafka
            .create_topic(topic, partitions)
            .await
            .map_err(|e| DevstackError::Kafka(e.to_string()))?;
        Ok(KafkaHost {
            bootstrap: kafka.bootstrap.clone(),
            broker: kafka.bootstrap.clone(),
            brokers: 1,
            fence: None,
            broker_kind: Broker::Real(kafka),
        })
    }

    /// Whether this is a real broker.
    pub fn is_real(&self) -> bool {
        matches!(self.broker_kind, Broker::Real(_))
    }

    /// Puts the fencing proxy in front of the (single) broker; clients connect to it from now on.
    pub async fn with_fencing(mut self) -> Result<Self, DevstackError> {
        if self.brokers != 1 {
            return Err(DevstackError::Kafka("the fencing proxy fronts one broker".into()));
        }
        let fence = FencingProxy::start(&self.broker)
            .await
            .map_err(|e| DevstackError::Kafka(e.to_string()))?;
        self.bootstrap = fence.bootstrap_servers();
        self.fence = Some(fence);
        Ok(self)
    }

    /// The fencing proxy, to see what it refused.
    pub fn fence(&self) -> Option<&FencingProxy> {
        self.fence.as_ref()
    }

    fn call(&self, make: impl FnOnce(mpsc::Sender<Result<(), String>>) -> Command) -> Result<(), DevstackError> {
        let Broker::Mock { commands, .. } = &self.broker_kind else {
            return Err(DevstackError::Kafka("not the mock cluster".into()));
        };
        let (tx, rx) = mpsc::channel();
        commands
            .send(make(tx))
            .map_err(|_| DevstackError::Kafka("the Kafka thread is gone".into()))?;
        rx.recv()
            .map_err(|_| DevstackError::Kafka("the Kafka thread is gone".into()))?
            .map_err(DevstackError::Kafka)
    }

    /// Takes every broker down (clients see connection failures; a real broker is killed with
    /// SIGKILL) ...
    pub fn down(&self) -> Result<(), DevstackError> {
        match &self.broker_kind {
            Broker::Real(kafka) => kafka.kill9().map_err(|e| DevstackError::Kafka(e.to_string())),
            Broker::Mock { .. } => self.call(Command::BrokersDown),
        }
    }

    /// ... and brings them back (a real broker restarts on its log).
    pub fn up(&self) -> Result<(), DevstackError> {
        match &self.broker_kind {
            Broker::Real(kafka) => kafka.restart().map_err(|e| DevstackError::Kafka(e.to_string())),
            Broker::Mock { .. } => self.call(Command::BrokersUp),
        }
    }
}

impl Drop for KafkaHost {
    fn drop(&mut self) {
        if let Broker::Mock { commands, thread } = &mut self.broker_kind {
            let _ = commands.send(Command::Stop);
            if let Some(t) = thread.take() {
                let _ = t.join();
            }
        }
    }
}
