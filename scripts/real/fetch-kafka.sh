#!/usr/bin/env bash
# Fetches Apache Kafka (the broker, KRaft mode) and a log4j2 binding from Maven Central, pinned,
# into a cache outside the repo keyed by version. Prints the directory of jars on stdout.
set -euo pipefail

KAFKA_VERSION="${STREAMSCAN_KAFKA_VERSION:-4.1.1}"
LOG4J_VERSION="${STREAMSCAN_LOG4J_VERSION:-2.25.3}"
SLF4J_VERSION="${STREAMSCAN_SLF4J_VERSION:-2.0.17}"
CACHE="${STREAMSCAN_REAL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/streamscan/real}"
LIBS="$CACHE/kafka-$KAFKA_VERSION-log4j-$LOG4J_VERSION-slf4j-$SLF4J_VERSION/libs"

if [ ! -f "$LIBS/.complete" ]; then
  echo "fetch-kafka: Apache Kafka $KAFKA_VERSION from Maven Central" >&2
  work="$CACHE/src/kafka-$KAFKA_VERSION"
  mkdir -p "$work" "$LIBS"
  cat > "$work/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>streamscan.test</groupId>
  <artifactId>kafka-broker</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId><version>$KAFKA_VERSION</version></dependency>
    <!-- slf4j 2, not the 1.7 a transitive dependency brings, so the log4j2 binding is used -->
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-api</artifactId><version>$SLF4J_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j2-impl</artifactId><version>$LOG4J_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>$LOG4J_VERSION</version></dependency>
  </dependencies>
</project>
POM
  mvn -q -B -f "$work/pom.xml" dependency:copy-dependencies -DoutputDirectory="$LIBS" -DincludeScope=runtime >&2
  touch "$LIBS/.complete"
fi
echo "$LIBS"
