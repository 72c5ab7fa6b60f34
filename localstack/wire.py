#!/usr/bin/env python3
"""Wires a bucket's notifications to the aic functions host through SNS, on LocalStack or AWS.

    wire.py --endpoint http://127.0.0.1:4566 --bucket aic --webhook http://127.0.0.1:8080/events

Creates the bucket (if missing) and the topic, lets S3 publish to the topic, subscribes the
host's /events endpoint (the host confirms the subscription itself, once it has checked the
signature), and sets the bucket's notification: every created object under users/ whose key
ends in .json (requests, manifests, status records) goes to the topic. Sets the bucket's CORS
for the web app (the host serves it; browsers upload and download through presigned URLs):
the host's origin, or each --cors-origin, may GET, PUT, HEAD and DELETE with any header, and
reads ETag (multipart parts). Prints the topic ARN as JSON: give it to the host as
AIC_SNS_TOPICS. Idempotent.

Needs boto3 (the LocalStack venv has it). Credentials and region come from the usual AWS_*
variables (LocalStack: test/test, us-east-1).
"""
import argparse
import json
import os
import sys
import time

import boto3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--endpoint", default=os.environ.get("AIC_S3_ENDPOINT"), help="S3/SNS endpoint (omit for AWS)")
    ap.add_argument("--bucket", required=True)
    ap.add_argument("--webhook", required=True, help="the functions host's /events URL")
    ap.add_argument("--topic", default="aic-events")
    ap.add_argument("--wait", type=float, default=0, help="seconds to wait for the host to confirm the subscription")
    ap.add_argument("--cors-origin", action="append", default=[],
                    help="an origin the web app is served from (default: the webhook's); repeatable")
    a = ap.parse_args()
    kw = {"region_name": os.environ.get("AWS_REGION", "us-east-1")}
    if a.endpoint:
        kw["endpoint_url"] = a.endpoint
    s3 = boto3.client("s3", **kw)
    sns = boto3.client("sns", **kw)
    try:
        s3.create_bucket(Bucket=a.bucket)
    except s3.exceptions.BucketAlreadyOwnedByYou:
        pass
    origins = a.cors_origin or ["/".join(a.webhook.split("/")[:3])]
    s3.put_bucket_cors(
        Bucket=a.bucket,
        CORSConfiguration={"CORSRules": [{
            "AllowedOrigins": origins,
            "AllowedMethods": ["GET", "PUT", "HEAD", "DELETE"],
            "AllowedHeaders": ["*"],
            "ExposeHeaders": ["ETag"],
            "MaxAgeSeconds": 3000,
        }]},
    )
    topic = sns.create_topic(Name=a.topic)["TopicArn"]
    policy = {
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow", "Principal": {"Service": "s3.amazonaws.com"}, "Action": "SNS:Publish",
            "Resource": topic, "Condition": {"ArnLike": {"aws:SourceArn": f"arn:aws:s3:::{a.bucket}"}},
        }],
    }
    sns.set_topic_attributes(TopicArn=topic, AttributeName="Policy", AttributeValue=json.dumps(policy))
    subs = sns.list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"]
    if not any(s["Endpoint"] == a.webhook for s in subs):
        proto = "https" if a.webhook.startswith("https://") else "http"
        sns.subscribe(TopicArn=topic, Protocol=proto, Endpoint=a.webhook)
    s3.put_bucket_notification_configuration(
        Bucket=a.bucket,
        NotificationConfiguration={
            "TopicConfigurations": [{
                "Id": "aic-functions",
                "TopicArn": topic,
                "Events": ["s3:ObjectCreated:*"],
                "Filter": {"Key": {"FilterRules": [
                    {"Name": "prefix", "Value": "users/"},
                    {"Name": "suffix", "Value": ".json"},
                ]}},
            }]
        },
    )
    deadline = time.time() + a.wait
    while True:
        subs = sns.list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"]
        mine = [s for s in subs if s["Endpoint"] == a.webhook]
        if mine and mine[0]["SubscriptionArn"] not in ("PendingConfirmation", ""):
            break
        if time.time() >= deadline:
            if a.wait:
                print(f"wire.py: {a.webhook} did not confirm the subscription in {a.wait} s; is the host up with AIC_SNS_TOPICS={topic}?", file=sys.stderr)
                return 1
            break
        time.sleep(0.2)
    json.dump({"topic_arn": topic, "bucket": a.bucket, "webhook": a.webhook}, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
