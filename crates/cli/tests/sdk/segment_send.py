"""Sends through the official Segment Python library (segment-analytics-python) to Storeline."""
import sys

import segment.analytics as analytics

url, key = sys.argv[1], sys.argv[2]
errors = []
analytics.write_key = key
analytics.host = url
analytics.sync_mode = True
analytics.on_error = lambda error, items: errors.append(repr(error))

analytics.identify("user-1", {"email": "ada@example.com", "name": "Ada", "plan": "gold"}, anonymous_id="anon-1")
analytics.page("user-1", category="Docs", name="Pricing", properties={"url": "https://shop.example/pricing", "title": "Pricing"})
analytics.track("user-1", "Product Viewed", {"product_id": "p-1", "sku": "SKU-1", "name": "Mug", "price": 12.5, "currency": "EUR"})
analytics.track("user-1", "Product Added", {"cart_id": "cart-1", "product_id": "p-1", "sku": "SKU-1", "quantity": 2, "price": 12.5, "currency": "EUR"})
analytics.track("user-1", "Order Completed", {
    "order_id": "ord-1", "total": 27.5, "shipping": 2.5, "currency": "EUR",
    "products": [{"product_id": "p-1", "sku": "SKU-1", "quantity": 2, "price": 12.5, "name": "Mug"}],
})
analytics.track("user-1", "Video Played", {"video": "intro"})
analytics.alias("anon-1", "user-1")
analytics.group("user-1", "company-1", {"name": "Acme"})
analytics.screen("user-1", "Home")
analytics.flush()
if errors:
    print("errors:", errors)
    sys.exit(1)
print("sent")
