.PHONY: broker-up broker-down broker-status

# Local single-node Kafka (KRaft) on 127.0.0.1; see scripts/broker.sh for the environment knobs.
broker-up:
	bash scripts/broker.sh up

broker-down:
	bash scripts/broker.sh down

broker-status:
	bash scripts/broker.sh status
