"""Push notifications for the poll-only Atleta GraphQL API."""
