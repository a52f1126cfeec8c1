"""Sends CloudEvents through the official CloudEvents Python SDK in structured and binary mode."""
import sys

import requests
from cloudevents.http import CloudEvent

try:
    from cloudevents.conversion import to_binary, to_structured
except ImportError:  # older SDKs
    from cloudevents.http import to_binary, to_structured

url, key = sys.argv[1], sys.argv[2]
auth = {"Authorization": f"Bearer {key}"}

structured = CloudEvent(
    {"type": "order.placed", "source": "https://shop.example/checkout", "subject": "cus-ce", "id": "ce-1"},
    {"order_id": "ord-ce", "total": {"amount": 1999, "currency": "EUR"},
     "lines": [{"sku": "SKU-1", "quantity": 1, "unit_price": {"amount": 1999, "currency": "EUR"}}]},
)
headers, body = to_structured(structured)
r = requests.post(f"{url}/v1/events", headers={**headers, **auth}, data=body)
assert r.status_code == 200, (r.status_code, r.text)

binary = CloudEvent(
    {"type": "com.example.stock.synced", "source": "/erp", "subject": "SKU-1", "id": "ce-2", "region": "eu"},
    {"sku": "SKU-1", "on_hand": 12},
)
headers, body = to_binary(binary)
r = requests.post(f"{url}/v1/events", headers={**headers, **auth}, data=body)
assert r.status_code == 200, (r.status_code, r.text)

bad = CloudEvent({"type": "order.placed", "source": "/x", "id": "ce-3"}, {"total": {"amount": 1, "currency": "EUR"}})
headers, body = to_structured(bad)
r = requests.post(f"{url}/v1/events", headers={**headers, **auth}, data=body)
assert r.status_code == 400 and "data.order_id" in r.text, (r.status_code, r.text)
print("sent")
